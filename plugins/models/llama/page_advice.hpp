#pragma once
// madvise on the whole pages inside a buffer: the callers' advice (huge pages for the packed
// weights, handing a packed source back) must not reach the neighbours that share its first or
// last page. Advice only: a failure (an advice this kernel lacks) changes nothing, so it is not
// reported.
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace vhost::llama {

// The pages of size `page` lying wholly inside [p, p + bytes), advised; nothing when there is none.
inline void advise_whole_pages(const void* p, std::size_t bytes, std::uintptr_t page, int advice) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (at + page - 1) / page * page, last = (at + bytes) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, advice);
}

}  // namespace vhost::llama
