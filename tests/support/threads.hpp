#pragma once
// Runs test participants in threads. Catch2 assertions are not thread-safe,
// so participants report failures as strings that the test thread checks.

#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace syncbn::testing {

/// Runs fn(0) ... fn(k-1), each in its own thread, and joins them all.
/// Returns one entry per participant: what fn returned ("" means success) or
/// "exception: <what>" when it threw.
template <class Fn>
std::vector<std::string> run_in_threads(int k, Fn fn) {
  std::vector<std::string> results(static_cast<std::size_t>(k));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(k));
  for (int id = 0; id < k; ++id) {
    threads.emplace_back([&results, &fn, id] {
      try {
        results[static_cast<std::size_t>(id)] = fn(id);
      } catch (const std::exception& e) {
        results[static_cast<std::size_t>(id)] = std::string("exception: ") + e.what();
      } catch (...) {
        results[static_cast<std::size_t>(id)] = "exception: unknown";
      }
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

/// Runs fn(id) in its own thread for each id and returns the exception each
/// threw (null where it returned normally).
template <class Fn>
std::vector<std::exception_ptr> capture_in_threads(int k, Fn fn) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(k));
  std::vector<std::thread> threads;
  for (int id = 0; id < k; ++id) {
    threads.emplace_back([&errors, &fn, id] {
      try {
        fn(id);
      } catch (...) {
        errors[static_cast<std::size_t>(id)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace syncbn::testing
