// Must not compile: parallel is below distributed.
#include "syncbn/distributed/mpi.hpp"
