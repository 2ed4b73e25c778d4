// Embedding vhost: load plugins and run a pipeline given as a TOML string, from your own program.
//   vhost_embed [threads]
#include <vhost/host/host.hpp>

#include <iostream>
#include <sstream>

int main(int argc, char** argv) {
  const std::string pipeline_toml = R"(
[pipeline]
name = "embedded"
stages = ["hello"]
work_dir = "runs/embedded"

[backends.cpu]
plugin = "cpu"
threads = 1

[stages.hello]
type = "info"
)";
  std::vector<std::string> overrides;
  if (argc > 1) overrides.push_back(std::string("backends.cpu.threads=") + argv[1]);

  try {
    vhost::host::set_log_level("warn");
    vhost::host::Host host;  // standard search path: VHOST_PLUGIN_PATH, beside libvhost_host, prefix
    auto pipeline = host.load_string(pipeline_toml, "embedded.toml", overrides);
    std::ostringstream stage_output;  // keep the stages' text; use the structured result instead
    vhost::host::RunOptions opts;
    opts.out = &stage_output;
    auto result = host.run(pipeline, opts);
    const auto& cpu = result.stages.at(0).output["instances"]["backends.cpu"]["description"];
    std::cout << "embedded run ok: device=" << cpu["device"].get<std::string>()
              << " threads=" << cpu["threads"] << " libtorch=" << cpu["libtorch"].get<std::string>() << "\n"
              << "report: " << result.report.string() << "\n";
    return 0;
  } catch (const vhost::host::Error& e) {
    std::cerr << "vhost error: " << e.what() << "\n";
    return 1;
  }
}
