// Must not compile: parallel is below dist.
#include "syncbn/dist/mpi.hpp"
