/* VECTOR_CLONES: compile a function twice on x86-64 with GCC, for CPUs with AVX2 and FMA
 * (x86-64-v3) and for any x86-64, the copy chosen when the library loads by the CPU's
 * features (VECTOR_CLONE_FEATURE, for __builtin_cpu_supports). (GCC's "arch=haswell" clone is
 * chosen by CPU model, so AMD and later Intel CPUs were given the generic SSE2 copy.) GCC
 * before 12 has no x86-64-v3 clone and takes the AVX2 feature alone. Rounding is the same in
 * every copy: compiled with -ffp-contract=off, a product and a sum are rounded each on its own
 * unless the C asks for fmaf. X86_GCC: 1 where the clones exist (x86-64 and GCC), else 0. */
#ifndef ISOFLOP_VECTOR_CLONES_H
#define ISOFLOP_VECTOR_CLONES_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define X86_GCC 1
#if __GNUC__ >= 12
#define VECTOR_CLONE_FEATURE "x86-64-v3"
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONE_FEATURE "avx2"
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define X86_GCC 0
#define VECTOR_CLONES
#endif

#endif
