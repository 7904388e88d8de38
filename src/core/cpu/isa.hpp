#pragma once
// Included first by every source that is compiled once per instruction-set
// level (the CPU kernels): SYNCBN_CPU_ISA names the level's namespace.
//
// Note [CPU dispatch]
// The hot CPU kernels (element-wise, reductions, gemm, activations, batch
// norm, losses) are compiled once per level, baseline (x86-64), avx2
// (x86-64-v3) and avx512 (x86-64-v4), each time into its own namespace
// syncbn::cpu::<level>, and cpu::active_capability() picks one set at run
// time from the CPU's features (or from SYNCBN_CPU_CAPABILITY), as PyTorch's
// DispatchStub does. Everything else is compiled for the baseline, so a
// binary runs on any x86-64 CPU.
//
// The one hazard of compiling a source several times with different flags is
// the linker: an inline function or template instantiation that is not
// unique to a level (say std::vector<float>'s destructor, or an inline helper
// of a shared header) is emitted by every level as a weak symbol, and the
// linker keeps one of them for all callers, maybe the AVX2 one for a baseline
// caller. So each level's objects are linked into one object that exports
// only the level's kernel set (src/core/CMakeLists.txt), code compiled per
// level keeps everything in the level's namespace or in an unnamed namespace
// and throws no errors of its own (entry points validate before dispatch; a
// kernel reports the impossible through core::detail::throw_unsupported_dtype,
// compiled once), and the test "core: CPU kernels of level L define symbols of
// their own namespace only" fails on any weak or global symbol outside the
// level's namespace in what each level contributes to the library.

#ifndef SYNCBN_CPU_ISA
#error "compiled once per CPU level: SYNCBN_CPU_ISA must name the level (baseline, avx2, avx512 or native)"
#endif
