// Must not compile: core is below nn, so nn's headers are not visible to it.
#include "syncbn/nn/module.hpp"
