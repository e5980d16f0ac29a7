#pragma once
// The exception types diffuse throws for bad input (defined by the public header, which has no
// dependencies): their messages name the file or field at fault; the CLI prints them and exits
// non-zero.
#include "diffuse/error.h"
