#pragma once
// From a torch::nn model with BatchNorm layers to one with SyncBatchNorm
// layers and back. libtorch's Module::replace_module swaps the registered
// child but not the member a module's forward calls (nor what a Sequential
// runs), so the conversion rebuilds the containers instead: Sequential,
// ModuleList and ModuleDict, nested. A module of the user's own with named
// BatchNorm members is built with the synchronized layers instead (see
// docs/usage.md, "With libtorch"); check_synchronized finds the layers
// that neither way reached.

#include <memory>

#include <torch/nn/module.h>

#include "syncbn/libtorch/sync_batch_norm.hpp"

namespace syncbn::libtorch {

/// A rebuilt `module` in which every torch::nn::BatchNorm1d/2d/3d is a
/// SyncBatchNorm1d/2d/3d with the same options, dtype and values of its
/// parameters and buffers (copies), and `sync`. Sequential, ModuleList and
/// ModuleDict are rebuilt with their children's names; every other module
/// is shared with `module`, which itself is left as it was. A BatchNorm as
/// `module` itself converts too. Build the optimizer from the result.
std::shared_ptr<torch::nn::Module> convert_sync_batchnorm(const std::shared_ptr<torch::nn::Module>& module,
                                                          const SyncOptions& sync = {});

/// The inverse: every SyncBatchNorm1d/2d/3d becomes torch::nn::BatchNorm1d/2d/3d
/// with its values, through the same rebuilding of the containers.
std::shared_ptr<torch::nn::Module> revert_sync_batchnorm(const std::shared_ptr<torch::nn::Module>& module);

/// Throws InvalidArgument naming every torch::nn::BatchNorm1d/2d/3d in
/// `module`'s tree (by its path, e.g. "layer1.0.bn1"): layers that a
/// synchronized run would leave normalising each replica's shard alone.
/// `op` names the caller in the message.
void check_synchronized(const torch::nn::Module& module, const char* op = "check_synchronized");

/// Throws InvalidArgument naming every SyncBatchNorm in `module`'s tree that
/// has run no training forward: after a training step of the model, such a
/// layer is registered but not what the model's forward calls (what
/// Module::replace_module leaves behind: it swaps the registered child, not
/// the member that forward calls, which stays a plain, unsynchronized
/// BatchNorm). A runner checks this after its first step.
void check_layers_ran(const torch::nn::Module& module, const char* op = "check_layers_ran");

}  // namespace syncbn::libtorch
