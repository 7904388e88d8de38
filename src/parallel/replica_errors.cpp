// Root-cause selection and context for replica failures.

#include "replica_errors.hpp"

#include "syncbn/error.hpp"

namespace syncbn::parallel::detail {

int root_failure(const std::vector<std::exception_ptr>& errors) {
  int first = -1;
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (!errors[i]) continue;
    if (first < 0) first = static_cast<int>(i);
    try {
      std::rethrow_exception(errors[i]);
    } catch (const CommError&) {
      continue;
    } catch (...) {
      return static_cast<int>(i);
    }
  }
  return first;
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
