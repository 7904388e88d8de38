// Must compile: nn depends on comm (the positive control of the probes).
#include "syncbn/comm/collectives.hpp"
#include "syncbn/nn/module.hpp"

int syncbn_layering_probe() { return static_cast<int>(syncbn::comm::Transport::Copy); }
