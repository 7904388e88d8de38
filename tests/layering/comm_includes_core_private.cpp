// Must not compile: comm sees core's public headers only, not its backend tables.
#include "backend/kernels.hpp"
