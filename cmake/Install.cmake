# `cmake --install build --prefix P` installs the library (the public headers include/diffuse/
# and the static libraries under them) with a CMake package: find_package(diffuse) then
# target_link_libraries(app PRIVATE diffuse::diffuse). examples/embed is such a program.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(DIFFUSE_INSTALLED_LIBS diffuse_pch diffuse_core diffuse_nn diffuse_diffusion diffuse_models diffuse_pipelines
                           diffuse_api)
install(TARGETS ${DIFFUSE_INSTALLED_LIBS} EXPORT diffuseTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/diffuse DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT diffuseTargets NAMESPACE diffuse:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/diffuseConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/diffuseConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/diffuseConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/diffuseConfig.cmake ${PROJECT_BINARY_DIR}/diffuseConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
