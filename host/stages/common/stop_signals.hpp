// Internal: SIGTERM (spot preemption, `kill`) and SIGINT (Ctrl-C) turned into a flag that a
// long stage (train, serve) polls to stop cleanly, while a StopSignals lives; a second signal
// leaves at once. SIGXFSZ is ignored meanwhile, so a file-size limit is a write error.
#pragma once

#include <csignal>

namespace vhost::host {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The signal received since construction, 0 for none.
  int signal() const;

 private:
  struct sigaction old_term_ {}, old_int_ {}, old_xfsz_ {};
};

}  // namespace vhost::host
