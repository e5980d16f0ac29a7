# Shared settings for every diffuse target: warnings, torch, one precompiled header.
add_library(diffuse_pch INTERFACE)
target_link_libraries(diffuse_pch INTERFACE ${TORCH_LIBRARIES} Threads::Threads)
target_compile_options(diffuse_pch INTERFACE $<BUILD_INTERFACE:-Wall -Wextra>)

# One object library holds the precompiled header; every other target reuses it.
add_library(diffuse_pch_obj OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(diffuse_pch_obj PUBLIC diffuse_pch)
target_precompile_headers(diffuse_pch_obj PRIVATE <torch/torch.h> <string> <vector> <map> <memory> <functional>)

function(diffuse_target name)
  target_link_libraries(${name} PUBLIC diffuse_pch)
  target_precompile_headers(${name} REUSE_FROM diffuse_pch_obj)
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                                            $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/src> $<INSTALL_INTERFACE:include>)
endfunction()
