// The torch ABI string of a plugin that uses libtorch. Two plugins may hand each other libtorch
// objects (the "torch." extensions) only when these strings are identical: same libtorch
// version, same C++ standard-library ABI, same compiler family and major, same GPU runtime.
// Cheap to include: only torch/version.h.
#pragma once

#include <torch/csrc/api/include/torch/version.h>

#ifndef VHOST_TORCH_GPU  // set by vhost_add_plugin(... TORCH) from what libtorch was built with
#define VHOST_TORCH_GPU "cpu"
#endif

#define VHOST_STR_(x) #x
#define VHOST_STR(x) VHOST_STR_(x)

#if defined(__clang__)
#define VHOST_COMPILER_ID "clang" VHOST_STR(__clang_major__)
#elif defined(__GNUC__)
#define VHOST_COMPILER_ID "gcc" VHOST_STR(__GNUC__)
#else
#define VHOST_COMPILER_ID "unknown"
#endif

#define VHOST_TORCH_ABI                                                                    \
  "torch-" TORCH_VERSION ";cxx11abi=" VHOST_STR(_GLIBCXX_USE_CXX11_ABI) ";" VHOST_COMPILER_ID \
  ";" VHOST_TORCH_GPU
