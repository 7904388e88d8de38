#pragma once
// Everything syncbn offers, in one include, layer by layer (bottom up).

// sync: the rendezvous and the error types.
#include "syncbn/error.hpp"
#include "syncbn/sync/future_result.hpp"
#include "syncbn/sync/parker.hpp"
#include "syncbn/sync/sync_master.hpp"
#include "syncbn/sync/wait_policy.hpp"
// core: devices, tensors, ops, batch-norm stages, backends.
#include "syncbn/core/batch_norm.hpp"
#include "syncbn/core/conv.hpp"
#include "syncbn/core/cpu.hpp"
#include "syncbn/core/cuda.hpp"
#include "syncbn/core/device.hpp"
#include "syncbn/core/dtype.hpp"
#include "syncbn/core/ops.hpp"
#include "syncbn/core/pool.hpp"
#include "syncbn/core/safetensors.hpp"
#include "syncbn/core/shape.hpp"
#include "syncbn/core/tensor.hpp"
// comm: collectives.
#include "syncbn/comm/collectives.hpp"
#include "syncbn/comm/process_group.hpp"
// nn: modules and checkpoints.
#include "syncbn/nn/activation.hpp"
#include "syncbn/nn/batch_norm.hpp"
#include "syncbn/nn/checkpoint.hpp"
#include "syncbn/nn/conv.hpp"
#include "syncbn/nn/linear.hpp"
#include "syncbn/nn/loss.hpp"
#include "syncbn/nn/module.hpp"
#include "syncbn/nn/pooling.hpp"
#include "syncbn/nn/replication_context.hpp"
#include "syncbn/nn/residual.hpp"
#include "syncbn/nn/resnet.hpp"
#include "syncbn/nn/sequential.hpp"
#include "syncbn/nn/size2.hpp"
#include "syncbn/nn/sync_batch_norm.hpp"
// optim: optimizers, parameter groups, learning-rate schedules.
#include "syncbn/optim/adam.hpp"
#include "syncbn/optim/lr_schedule.hpp"
#include "syncbn/optim/optimizer.hpp"
#include "syncbn/optim/param_groups.hpp"
#include "syncbn/optim/sgd.hpp"
// parallel: replicate and DataParallel.
#include "syncbn/parallel/data_parallel.hpp"
#include "syncbn/parallel/replicate.hpp"
// data: datasets and mini-batches.
#include "syncbn/data/batch_iterator.hpp"
#include "syncbn/data/fashion_mnist.hpp"
#include "syncbn/data/idx.hpp"
// distributed: process groups across processes (MPI).
#include "syncbn/distributed/distributed_data_parallel.hpp"
#include "syncbn/distributed/mpi.hpp"
#include "syncbn/distributed/nccl.hpp"
