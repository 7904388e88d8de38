// main() of the test areas' binaries (support/catch_runner.hpp).
#include "support/catch_runner.hpp"

int main(int argc, char** argv) { return syncbn::testing::run_test_area(argc, argv); }
