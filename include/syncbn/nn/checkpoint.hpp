#pragma once
// Checkpoints: a module's parameters and buffers by name, in PyTorch's
// state_dict names and order, saved to and loaded from safetensors files
// that PyTorch reads and writes.

#include <string>
#include <utility>
#include <vector>

#include "syncbn/core/tensor.hpp"
#include "syncbn/nn/module.hpp"

namespace syncbn::nn {

/// The module's state as PyTorch's Module.state_dict() lays it out: the
/// modules in pre-order, each contributing its own parameters, then its own
/// buffers, in registration order, named by dotted path ("0.weight",
/// "1.running_mean", "1.num_batches_tracked", "3.0.bias"). A BatchNorm's
/// buffers are running_mean and running_var (the parameter dtype) and
/// num_batches_tracked (int64, rank 0), as in PyTorch; a layer without
/// running statistics has none. SyncBatchNorm has BatchNorm's names, so
/// convert_sync_batchnorm does not change a model's state_dict.
///
/// The tensors are the module's own (shared storage, like PyTorch's): clone
/// them to keep a snapshot that later training does not change.
std::vector<std::pair<std::string, Tensor>> state_dict(Module& module);

/// Copies `state` into the module's parameters and buffers, in place
/// (Tensor::copy_ onto each tensor's own device), so Parameter objects and
/// pointers to them, e.g. an optimizer's, stay valid and see the new values.
///
/// Everything is checked before anything is copied, so a bad state leaves
/// the module unchanged: InvalidArgument for an undefined tensor or a name
/// given twice in `state`; with `strict`, for names of the module that
/// `state` lacks and names of `state` that the module lacks (all of them
/// listed); whatever `strict`, for a tensor whose shape or dtype differs from
/// the module's (no conversion: a float64 checkpoint does not load into a
/// float32 model). Without `strict`, names on one side only are skipped.
void load_state_dict(Module& module, const std::vector<std::pair<std::string, Tensor>>& state, bool strict = true);

/// Writes state_dict(module) to the safetensors file `path` with the
/// metadata {"format": "pt"} (what PyTorch tools write for a state_dict);
/// PyTorch's load_state_dict accepts it. Written to `path + ".tmp"` and
/// renamed (see core::save_safetensors). Errors start with "nn::save" and
/// name the path.
void save(Module& module, const std::string& path);

/// Reads the safetensors file `path` (written by save, or a PyTorch
/// state_dict of a model with the same architecture) and load_state_dict's
/// it. The file is read and checked completely before the module changes.
/// Errors start with "nn::load: '<path>'" and say what is wrong with the
/// file or how it differs from the module.
void load(Module& module, const std::string& path, bool strict = true);

}  // namespace syncbn::nn
