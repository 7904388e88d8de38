#pragma once
// Small layers for replication and failure tests.

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "syncbn/sync/sync_master.hpp"
#include "syncbn/error.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/parallel/replicate.hpp"

namespace syncbn::testing {

/// A log shared by all copies of a module (copies share the pointer).
struct CallLog {
  std::mutex mutex;
  std::vector<std::string> lines;
  void add(std::string line) {
    std::lock_guard<std::mutex> lock(mutex);
    lines.push_back(std::move(line));
  }
};

/// Identity that records every replication callback: "<tag> copy=<k> ctx=<address>".
class Recorder : public nn::Cloneable<Recorder> {
 public:
  Recorder(std::string tag, std::shared_ptr<CallLog> log) : tag_(std::move(tag)), log_(std::move(log)) {}
  std::string describe() const override { return "Recorder(" + tag_ + ")"; }
  Tensor forward(const Tensor& x) override { return x; }
  Tensor backward(const Tensor& g) override { return g; }
  void on_replicate(nn::ReplicationContext& ctx, int copy_id) override {
    copy_id_ = copy_id;
    log_->add(tag_ + " copy=" + std::to_string(copy_id) + " ctx=" + std::to_string(reinterpret_cast<std::uintptr_t>(&ctx)));
  }
  int copy_id() const noexcept { return copy_id_; }

 private:
  std::string tag_;
  std::shared_ptr<CallLog> log_;
  int copy_id_ = -1;
};

/// Identity that throws on one replica at its n-th forward (or backward).
class ThrowAt : public nn::Cloneable<ThrowAt> {
 public:
  enum class Kind { Runtime, InvalidArgument };
  ThrowAt(int replica, int call, bool in_backward = false, Kind kind = Kind::Runtime)
      : replica_(replica), call_(call), in_backward_(in_backward), kind_(kind) {}
  std::string describe() const override { return "ThrowAt"; }
  void on_replicate(nn::ReplicationContext& /*ctx*/, int copy_id) override { copy_id_ = copy_id; }
  Tensor forward(const Tensor& x) override {
    if (!in_backward_) maybe_throw();
    return x;
  }
  Tensor backward(const Tensor& g) override {
    if (in_backward_) maybe_throw();
    return g;
  }

 private:
  void maybe_throw() {
    if (++calls_ == call_ && copy_id_ == replica_) {
      if (kind_ == Kind::InvalidArgument) throw InvalidArgument("ThrowAt: bad shard at call " + std::to_string(calls_));
      throw std::runtime_error("boom at call " + std::to_string(calls_));
    }
  }
  int replica_, call_;
  bool in_backward_;
  Kind kind_;
  int copy_id_ = -1;
  int calls_ = 0;
};

/// Identity whose forward meets all replicas in a SyncMaster round (wired
/// through the replication callback) and logs how each replica left it.
class Rendezvous : public nn::Cloneable<Rendezvous> {
 public:
  using Master = sync::SyncMaster<int, int>;
  explicit Rendezvous(std::shared_ptr<CallLog> log, std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : log_(std::move(log)), timeout_(timeout) {}
  std::string describe() const override { return "Rendezvous"; }
  void on_replicate(nn::ReplicationContext& ctx, int copy_id) override {
    copy_id_ = copy_id;
    if (copy_id == 0) {
      master_ = std::make_shared<Master>(
          [](std::vector<std::pair<int, int>> msgs) {
            int total = 0;
            for (auto& m : msgs) total += m.second;
            std::vector<std::pair<int, int>> replies;
            for (auto& m : msgs) replies.emplace_back(m.first, total);
            return replies;
          },
          sync::SyncOptions{"Rendezvous", timeout_, {}});
      ctx.set(master_);
      std::weak_ptr<Master> weak = master_;
      ctx.on_failure([weak](int failed, const std::string& reason) { if (auto m = weak.lock()) m->abort_for(failed, reason); },
                     [weak] { if (auto m = weak.lock()) m->reset(); });
    } else {
      pipe_ = std::make_shared<Master::Pipe>(ctx.get<Master>("Rendezvous")->register_slave(copy_id));
    }
  }
  Tensor forward(const Tensor& x) override {
    try {
      if (copy_id_ == 0) master_->run_master(1);
      else if (copy_id_ > 0) pipe_->run_slave(1);
      log_->add("replica " + std::to_string(copy_id_) + " ok");
    } catch (const std::exception& e) {
      log_->add("replica " + std::to_string(copy_id_) + " released: " + e.what());
      throw;
    }
    return x;
  }
  Tensor backward(const Tensor& g) override { return g; }

 private:
  std::shared_ptr<CallLog> log_;
  std::chrono::milliseconds timeout_;
  int copy_id_ = -1;
  std::shared_ptr<Master> master_;
  std::shared_ptr<Master::Pipe> pipe_;
};

}  // namespace syncbn::testing
