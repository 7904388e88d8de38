// Root-cause selection and context for replica failures.

#include "replica_errors.hpp"

#include "syncbn/error.hpp"

namespace syncbn::parallel::detail {

namespace {

// 0: a layer's own error, 1: a Timeout, 2: another CommError.
int kind_rank(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Timeout&) {
    return 1;
  } catch (const CommError&) {
    return 2;
  } catch (...) {
    return 0;
  }
}

}  // namespace

int root_failure(const std::vector<std::exception_ptr>& errors, const std::vector<int>& order) {
  int best = -1;
  std::pair<int, int> best_key;
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (!errors[i]) continue;
    // A layer's own errors are genuine each: the lowest replica's, so that
    // the same bad input always gives the same message. Communication
    // errors follow the first one: the others were released because of it.
    const int kind = kind_rank(errors[i]);
    const int when = kind == 0 || i >= order.size() ? static_cast<int>(i) : order[i];
    const std::pair<int, int> key{kind, when};
    if (best < 0 || key < best_key) {
      best = static_cast<int>(i);
      best_key = key;
    }
  }
  return best;
}

void rethrow_with_context(const std::exception_ptr& error, const std::string& prefix) {
  try {
    std::rethrow_exception(error);
  } catch (const Timeout& e) {
    throw Timeout(prefix + e.what());
  } catch (const CommError& e) {
    throw CommError(prefix + e.what());
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(prefix + e.what());
  } catch (const Unsupported& e) {
    throw Unsupported(prefix + e.what());
  } catch (const CudaError& e) {
    throw CudaError(prefix + e.what());
  } catch (const NcclError& e) {
    throw NcclError(prefix + e.what());
  } catch (const std::exception& e) {
    throw Error(prefix + e.what());
  } catch (...) {
    throw Error(prefix + "an exception not derived from std::exception");
  }
}

}  // namespace syncbn::parallel::detail
