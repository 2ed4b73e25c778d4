#include "stages.hpp"

#include <vhost/host/host.hpp>

#include <chrono>

namespace vhost::host {

namespace {

void print_json_fields(std::ostream& out, const json& j, const std::string& indent) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object()) {
      out << indent << it.key() << ":\n";
      print_json_fields(out, *it, indent + "  ");
    } else {
      out << indent << it.key() << ": " << (it->is_string() ? it->get<std::string>() : it->dump()) << "\n";
    }
  }
}

// `info`: creates instances and prints what they say about themselves (device, threads, files).
json run_info(StageContext& ctx) {
  auto wanted = ctx.config["instances"].get<std::vector<std::string>>();
  if (wanted.empty()) wanted = ctx.declared;
  json out = {{"host", {{"version", version()}, {"abi", abi_version()}}}, {"instances", json::object()}};
  ctx.out << "vhost " << version() << " (plugin ABI " << abi_version() << ")\n";
  for (const auto& ref : wanted) {
    Instance& inst = ctx.instance(ref);
    const auto& p = inst.plugin();
    json d = inst.describe();
    ctx.out << ref << ": " << p.kind << " plugin '" << p.name << "' " << p.desc->version << "\n"
            << "  file: " << p.file.string() << "\n";
    print_json_fields(ctx.out, d, "  ");
    out["instances"][ref] = {{"kind", p.kind},
                             {"plugin", p.name},
                             {"version", p.desc->version},
                             {"file", p.file.string()},
                             {"description", d}};
  }
  return out;
}

// `probe`: one request to a judge, to check its endpoint, key and reply format before a long
// evaluation spends money on it.
json run_probe(StageContext& ctx) {
  Instance& judge = ctx.instance(ctx.config["judge"].get<std::string>());
  json request = {{"messages", json::array({{{"role", "user"}, {"content", ctx.config["prompt"]}}})},
                  {"temperature", 0.0},
                  {"max_tokens", ctx.config["max_tokens"]}};
  auto t0 = std::chrono::steady_clock::now();
  json reply = judge.judge_complete(request);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ctx.out << ctx.config["judge"].get<std::string>() << " replied in " << seconds << " s:\n"
          << reply["text"].get<std::string>() << "\n";
  return {{"judge", ctx.config["judge"]}, {"seconds", seconds}, {"reply", reply}};
}

OptionSpec opt(std::string key, std::string type, std::optional<json> def, std::string help,
               std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt) {
  OptionSpec s;
  s.key = std::move(key);
  s.type = std::move(type);
  s.default_value = std::move(def);
  s.help = std::move(help);
  s.min = min;
  s.max = max;
  return s;
}

}  // namespace

const std::vector<StageType>& stage_types() {
  static const std::vector<StageType> types = {
      {"info",
       "Creates plugin instances and prints what each reports (device, threads, versions).",
       {opt("instances", "string_list", json::array(),
            "instance ids to describe, e.g. [\"backends.cpu\"]; empty: every instance")},
       {},
       {"instances"},
       run_info},
      {"probe",
       "Sends one prompt to a judge and prints the reply and latency.",
       {opt("judge", "string", "", "the judge instance (a name under [judges]); empty: the only one"),
        opt("prompt", "string", "Reply with the single word: ready", "the prompt"),
        opt("max_tokens", "integer", 16, "reply length limit", 1, 1 << 20)},
       {{"judge", VHOST_KIND_JUDGE}},
       {},
       run_probe},
  };
  return types;
}

const StageType* find_stage_type(const std::string& type) {
  for (const auto& t : stage_types())
    if (t.type == type) return &t;
  return nullptr;
}

}  // namespace vhost::host
