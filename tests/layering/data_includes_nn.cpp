// Must not compile: data depends on core only, so nn's headers are not visible to it.
#include "syncbn/nn/module.hpp"
