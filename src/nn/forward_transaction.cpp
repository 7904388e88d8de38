// ForwardTransaction: the calling thread's undo records (Note [All-or-nothing
// forward] in forward_transaction.hpp).

#include "syncbn/nn/forward_transaction.hpp"

#include <exception>
#include <iterator>
#include <vector>

namespace syncbn::nn {
namespace {

struct UndoLog {
  std::vector<std::function<void()>> records;
  int depth = 0;
  UndoRecords* adopter = nullptr;  // where completed records go (a runner's step)
};

// One log per thread: each replica thread runs its own copy of the model.
UndoLog& undo_log() {
  thread_local UndoLog log;
  return log;
}

}  // namespace

ForwardTransaction::ForwardTransaction() noexcept
    : mark_(undo_log().records.size()), uncaught_(std::uncaught_exceptions()) {
  ++undo_log().depth;
}

ForwardTransaction::~ForwardTransaction() {
  UndoLog& log = undo_log();
  --log.depth;
  if (std::uncaught_exceptions() > uncaught_) {
    for (std::size_t i = log.records.size(); i-- > mark_;) {
      try {
        log.records[i]();
      } catch (...) {
      }
    }
    log.records.resize(mark_);
  }
  if (log.depth == 0) {
    if (log.adopter != nullptr && !log.records.empty()) {
      try {
        log.adopter->take(std::move(log.records));
      } catch (...) {
        // Out of memory while keeping them: the step can no longer be undone
        // past this point; the records are dropped as without an adopter.
      }
    }
    log.records.clear();
  }
}

bool ForwardTransaction::active() noexcept { return undo_log().depth > 0; }

void ForwardTransaction::record(std::function<void()> undo) {
  UndoLog& log = undo_log();
  if (log.depth > 0) log.records.push_back(std::move(undo));
}

UndoRecords::Adopt::Adopt(UndoRecords& records) noexcept : previous_(undo_log().adopter) {
  undo_log().adopter = &records;
}

UndoRecords::Adopt::~Adopt() { undo_log().adopter = previous_; }

void UndoRecords::take(std::vector<std::function<void()>>&& records) {
  const std::lock_guard lock(mutex_);
  records_.insert(records_.end(), std::make_move_iterator(records.begin()), std::make_move_iterator(records.end()));
}

void UndoRecords::undo() noexcept {
  const std::lock_guard lock(mutex_);
  for (std::size_t i = records_.size(); i-- > 0;) {
    try {
      records_[i]();
    } catch (...) {
    }
  }
  records_.clear();
}

void UndoRecords::clear() noexcept {
  const std::lock_guard lock(mutex_);
  records_.clear();
}

}  // namespace syncbn::nn
