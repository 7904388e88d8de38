// Must not compile: nn is below parallel.
#include "syncbn/parallel/replicate.hpp"
