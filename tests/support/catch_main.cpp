// The one translation unit that compiles Catch2's runner for the CPU test binaries.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
