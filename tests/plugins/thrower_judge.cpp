// Test judge whose factory throws a plain std::exception.
#include <vhost/plugin.hpp>

#include <stdexcept>

namespace {
class Thrower final : public vhost::Judge {
 public:
  static std::vector<vhost::Option> options() { return {}; }
  explicit Thrower(const vhost::Config&) { throw std::runtime_error("boom in factory"); }
  vhost::json complete(const vhost::json&) override { return {}; }
};
}  // namespace

VHOST_PLUGIN(Thrower, "thrower", "0.0.1", "test judge whose factory throws")
