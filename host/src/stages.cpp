#include "stages.hpp"

#include "cluster.hpp"
#include "eval.hpp"
#include "server.hpp"
#include "html_text.hpp"

#include <vhost/host/host.hpp>
#include <vhost/host/sampling.hpp>

#include <vhost/conversation.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

namespace vhost::host {

namespace {

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// "0.058 ms", "2.35 s", "312 s": a duration as a person reads it (not 5.847e-05).
std::string human_seconds(double s) {
  if (s < 1e-3) return fmt("%.3f ms", s * 1e3);
  if (s < 1) return fmt("%.1f ms", s * 1e3);
  if (s < 100) return fmt("%.2f s", s);
  return fmt("%.0f s", s);
}

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
  ctx.out << ctx.config["judge"].get<std::string>() << " replied in " << human_seconds(seconds) << ":\n"
          << reply["text"].get<std::string>() << "\n";
  return {{"judge", ctx.config["judge"]}, {"seconds", seconds}, {"reply", reply}};
}

// `generate`: prompts through a model, streamed to the terminal; the texts go to the report
// and to work_dir/<stage>.jsonl.
json run_generate(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  json request = {{"prompts", c["prompts"]},
                  {"max_tokens", c["max_tokens"]},
                  {"temperature", c["temperature"]},
                  {"top_p", c["top_p"]},
                  {"top_k", std::max<int64_t>(c["top_k"].get<int64_t>(), 0)},  // -1 and 0: all
                  {"repetition_penalty", c["repetition_penalty"]},
                  {"stop", c["stop"]},
                  {"add_bos", true}};
  if (c["seed"].get<int64_t>() >= 0) request["seed"] = c["seed"];
  const auto prompts = c["prompts"].get<std::vector<std::string>>();
  const bool stream = c["stream"].get<bool>() && prompts.size() == 1;
  if (stream) ctx.out << prompts[0] << std::flush;
  auto t0 = std::chrono::steady_clock::now();
  json reply = model.model_generate(request, [&](uint32_t, int32_t, const std::string& text) {
    if (stream) ctx.out << text << std::flush;
    return true;
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stream) ctx.out << "\n";
  std::ofstream jsonl(ctx.work_dir / (ctx.id + ".jsonl"));
  for (const auto& ch : reply["choices"]) {
    std::size_t i = ch["index"].get<std::size_t>();
    if (!stream) ctx.out << "[" << i << "] " << prompts.at(i) << ch["text"].get<std::string>() << "\n";
    jsonl << json{{"prompt", prompts.at(i)}, {"text", ch["text"]}, {"finish_reason", ch["finish_reason"]}}.dump()
          << "\n";
  }
  int64_t completion = reply["usage"]["completion_tokens"].get<int64_t>();
  ctx.out << completion << " tokens in " << human_seconds(seconds) << " (" << fmt("%.1f", seconds > 0 ? completion / seconds : 0.0)
          << " tokens/s)\n";
  reply["seconds"] = seconds;
  return reply;
}

// `model-init`: writes a random checkpoint of a preset shape, with a tokenizer trained on a text
// file, unless one is already there: the demo's "tiny model made on the spot".
json run_model_init(StageContext& ctx) {
  const auto& c = ctx.config;
  fs::path out = c["out"].get<std::string>();
  if (fs::exists(out / "config.json") && !c["overwrite"].get<bool>()) {
    ctx.out << out.string() << " exists; kept (overwrite = true to replace it)\n";
    return {{"out", out.string()}, {"created", false}};
  }
  json args = {{"preset", c["preset"]}, {"out", out.string()}, {"seed", c["seed"]}, {"dtype", c["dtype"]},
               {"context", c["context"]}};
  if (!c["tokenizer"].get<std::string>().empty()) args["tokenizer"] = c["tokenizer"];
  if (!c["tokenizer_text"].get<std::string>().empty()) args["tokenizer_text"] = c["tokenizer_text"];
  json r = ctx.model_tool(c["plugin"].get<std::string>(), "init", args);
  ctx.out << "wrote " << out.string() << ": " << r["parameters"] << " parameters (" << c["preset"].get<std::string>()
          << ", random weights)\n";
  r["created"] = true;
  return r;
}

// `prepare`: a dataset plugin turns its raw source into training tokens, tokenizing with a model.
json run_prepare(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& dataset = ctx.instance(c["dataset"].get<std::string>());
  const std::string model_ref = c["model"].get<std::string>();
  ctx.instance(model_ref);  // created before the dataset asks for it
  json stats = dataset.dataset_prepare({{"out_dir", c["out"]}, {"model", model_ref}});
  if (stats.contains("table") && stats["table"].is_string()) {
    ctx.out << c["dataset"].get<std::string>() << " -> " << c["out"].get<std::string>() << "\n"
            << stats["table"].get<std::string>();
    stats.erase("table");
  }
  return stats;
}

std::atomic<bool> g_chat_interrupted{false};

// `chat`: an interactive multi-turn chat in the terminal, like FastChat's CLI. Lines starting
// with "!!" are commands: !!exit, !!reset, !!regen. Each turn renders the whole conversation
// with the template (oldest pairs dropped when it would not fit the context) and streams the
// reply; the transcript goes to work_dir/<stage>.jsonl.
json run_chat(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  json info = model.model_tokenizer_info();
  conv::Template templ;
  try {
    templ = conv::model_template(info, c["template"].get<std::string>());
  } catch (const conv::TemplateError& e) {
    throw ConfigError(ctx.id + ".template: " + e.what());
  }
  const conv::Template* t = &templ;
  conv::Conversation conv;
  if (!c["system"].get<std::string>().empty()) conv.system = c["system"].get<std::string>();
  const int64_t context = info.value("context", int64_t{2048});
  const int64_t max_tokens = c["max_tokens"].get<int64_t>();
  std::ofstream log(ctx.work_dir / (ctx.id + ".jsonl"), std::ios::app);
  const bool prompt_marks = c["prompt"].get<bool>();
  int turns = 0;
  ctx.out << "chat with " << model.plugin().name << " (" << c["model"].get<std::string>() << "), template " << t->name
          << "; !!exit to quit, !!reset to start over, !!regen to answer again\n";
  std::string line;
  while (true) {
    if (prompt_marks) ctx.out << t->roles[0] << ": " << std::flush;
    if (!std::getline(ctx.in, line)) break;
    if (line == "!!exit") break;
    if (line == "!!reset") {
      conv.messages.clear();
      ctx.out << "(conversation cleared)\n";
      continue;
    }
    if (line == "!!regen") {
      if (conv.messages.size() < 2) {
        ctx.out << "(nothing to regenerate)\n";
        continue;
      }
      conv.messages.pop_back();
    } else {
      if (line.empty()) continue;
      conv.messages.push_back(line);
    }
    // Drop the oldest pairs until the prompt and the reply fit the context.
    std::string prompt = conv::render(*t, conv).text();
    while (conv.messages.size() > 1 &&
           static_cast<int64_t>(model.model_encode(prompt, true, false).size()) + max_tokens > context) {
      conv.messages.erase(conv.messages.begin(), conv.messages.begin() + 2);
      prompt = conv::render(*t, conv).text();
    }
    json request = {{"prompts", json::array({prompt})},
                    {"max_tokens", max_tokens},
                    {"temperature", c["temperature"]},
                    {"top_p", c["top_p"]},
                    {"repetition_penalty", c["repetition_penalty"]},
                    {"stop", t->stop_strings()},
                    {"add_bos", true}};
    if (c["seed"].get<int64_t>() >= 0) request["seed"] = c["seed"].get<int64_t>() + turns;
    if (prompt_marks) ctx.out << t->roles[1] << ": " << std::flush;
    // Ctrl-C during a reply stops the reply, as in FastChat's CLI; at the prompt it still quits.
    g_chat_interrupted = false;
    struct sigaction stop_reply {}, before {};
    stop_reply.sa_handler = [](int) { g_chat_interrupted = true; };
    sigemptyset(&stop_reply.sa_mask);
    sigaction(SIGINT, &stop_reply, &before);
    json reply;
    try {
      reply = model.model_generate(request, [&](uint32_t, int32_t, const std::string& text) {
        ctx.out << text << std::flush;
        return !g_chat_interrupted.load();
      });
    } catch (...) {
      sigaction(SIGINT, &before, nullptr);
      throw;
    }
    sigaction(SIGINT, &before, nullptr);
    if (g_chat_interrupted) ctx.out << " (stopped)";
    ctx.out << "\n" << std::flush;
    std::string text = reply["choices"][0]["text"].get<std::string>();
    auto b = text.find_first_not_of(" \n");
    auto e = text.find_last_not_of(" \n");
    text = b == std::string::npos ? "" : text.substr(b, e - b + 1);
    conv.messages.push_back(text);
    log << json{{"turn", turns}, {"user", conv.messages[conv.messages.size() - 2]}, {"assistant", text},
                {"finish_reason", reply["choices"][0]["finish_reason"]}}
               .dump()
        << "\n";
    ++turns;
  }
  return {{"turns", turns}, {"template", t->name}, {"transcript", (ctx.work_dir / (ctx.id + ".jsonl")).string()}};
}


// ---- train ----------------------------------------------------------------------------------

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) std::_Exit(128 + sig);  // a second signal: leave now
}

// SIGTERM (spot preemption, `kill`) and SIGINT (Ctrl-C) ask the trainer for a checkpoint and a
// clean stop while this lives; SIGXFSZ is ignored so a file-size limit is a write error.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGINT, &sa, &old_int_);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &ign, &old_xfsz_);
  }
  ~StopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGXFSZ, &old_xfsz_, nullptr);
  }
  int signal() const { return g_stop_signal.load(); }

 private:
  struct sigaction old_term_ {}, old_int_ {}, old_xfsz_ {};
};

std::string duration_str(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char b[32];
  auto t = static_cast<long long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
  return b;
}


}  // namespace

// Round axis ticks: a step of 1, 2 or 5 times a power of ten giving at most `most` intervals
// over [lo, hi], the range widened to whole steps (8.78..0.0324 reads 0, 2, 4, 6, 8, 10).
AxisTicks nice_ticks(double lo, double hi, int most) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi < lo) std::swap(lo, hi);
  if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
  most = std::max(most, 1);
  double raw = (hi - lo) / most, mag = std::pow(10.0, std::floor(std::log10(raw))), step = 10 * mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw * (1 - 1e-9)) { step = m * mag; break; }
  AxisTicks t;
  t.lo = std::floor(lo / step + 1e-9) * step;
  t.hi = std::ceil(hi / step - 1e-9) * step;
  int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  for (double v = t.lo; v <= t.hi + step * 1e-6; v += step) {
    double r = std::abs(v) < step * 1e-6 ? 0.0 : v;
    t.values.push_back(r);
    char b[48];
    std::snprintf(b, sizeof b, "%.*f", decimals, r);
    t.labels.emplace_back(b);
  }
  return t;
}

// The loss curve as a standalone SVG: training loss per step (line), evaluation loss (dots),
// round ticks on both axes, the legend above the plot where no point can cover it.
void write_loss_svg(const fs::path& file, const std::vector<std::pair<double, double>>& loss,
                    const std::vector<std::pair<double, double>>& eval, const std::string& title) {
  const double W = 640, H = 420, L = 64, R = 16, T = 56, B = 48;
  double xmax = 1, y0 = INFINITY, y1 = -INFINITY;
  for (const auto* series : {&loss, &eval})
    for (auto [x, y] : *series) {
      if (!std::isfinite(y)) continue;
      xmax = std::max(xmax, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  const AxisTicks xt = nice_ticks(0, xmax, 6), yt = nice_ticks(y0, y1, 5);
  auto px = [&](double x) { return L + (x - xt.lo) / (xt.hi - xt.lo) * (W - L - R); };
  auto py = [&](double y) { return T + (yt.hi - y) / (yt.hi - yt.lo) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">" << html_escape(title) << "</text>\n";
  for (size_t i = 0; i < yt.values.size(); ++i)
    o << "<line x1=\"" << L << "\" y1=\"" << py(yt.values[i]) << "\" x2=\"" << W - R << "\" y2=\"" << py(yt.values[i]) << "\" stroke=\"#ddd\"/>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << py(yt.values[i]) + 4 << "\" text-anchor=\"end\">" << yt.labels[i] << "</text>\n";
  for (size_t i = 0; i < xt.values.size(); ++i)
    o << "<line x1=\"" << px(xt.values[i]) << "\" y1=\"" << H - B << "\" x2=\"" << px(xt.values[i]) << "\" y2=\"" << H - B + 4 << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << px(xt.values[i]) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << xt.labels[i] << "</text>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
    << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
    << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">step</text>\n"
    << "<text x=\"14\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 14 " << (T + H - B) / 2
    << ")\" text-anchor=\"middle\">loss</text>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (auto [x, y] : loss)
    if (std::isfinite(y)) o << fmt("%.1f", px(x)) << "," << fmt("%.1f", py(y)) << " ";
  o << "\"/>\n";
  for (auto [x, y] : eval)
    if (std::isfinite(y)) o << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"4\" fill=\"#d62728\"/>\n";
  // Legend: above the plot's frame (T), so a point near the top right cannot hide it.
  const double ly = T - 14;
  o << "<line x1=\"" << W - R - 150 << "\" y1=\"" << ly - 4 << "\" x2=\"" << W - R - 130 << "\" y2=\"" << ly - 4
    << "\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/><text x=\"" << W - R - 125 << "\" y=\"" << ly << "\">train</text>\n"
    << "<circle cx=\"" << W - R - 60 << "\" cy=\"" << ly - 4 << "\" r=\"4\" fill=\"#d62728\"/><text x=\"" << W - R - 50
    << "\" y=\"" << ly << "\">eval</text>\n</svg>\n";
  std::ofstream f(file);
  f << o.str();
}

namespace {

// `train`: fine-tunes a model instance on a prepared dataset. The model plugin does the maths;
// the host shows progress, keeps metrics.jsonl and the loss curve, and turns SIGTERM/SIGINT into
// a checkpoint and a clean stop (run the same command again to resume).
json run_train(StageContext& ctx) {
  const auto& c = ctx.config;
  Instance& model = ctx.instance(c["model"].get<std::string>());
  fs::path out = c["out"].get<std::string>();
  json request = c;
  request.erase("model");
  request.erase("log_every");
  fs::create_directories(out);
  const fs::path metrics_file = out / "metrics.jsonl";
  std::vector<std::pair<double, double>> curve, evals;
  std::ofstream metrics;
  const bool tty = ::isatty(STDOUT_FILENO) && &ctx.out == &std::cout;
  int64_t log_every = c["log_every"].get<int64_t>(), total = 0;
  bool lead = true;
  StopSignals signals;
  int64_t last_step = 0;
  auto on_event = [&](const json& e) -> bool {
    const std::string kind = e.value("event", "");
    lead = e.value("rank", 0) == 0;
    if (kind == "start") {
      total = e.value("total_steps", int64_t{0});
      int64_t from = e.value("start_step", int64_t{0});
      last_step = from;
      if (log_every <= 0) log_every = std::max<int64_t>(1, total / 20);
      if (lead) {
        // Keep the metrics of the steps the checkpoint holds; later ones are redone.
        std::vector<std::string> kept;
        std::ifstream old(metrics_file);
        for (std::string line; std::getline(old, line);) {
          try {
            json m = json::parse(line);
            if (m.value("step", int64_t{0}) > from) continue;
            if (m.contains("loss")) curve.emplace_back(m["step"].get<double>(), m["loss"].get<double>());
            if (m.contains("eval_loss") && m["eval_loss"].is_number())
              evals.emplace_back(m["step"].get<double>(), m["eval_loss"].get<double>());
          } catch (const json::exception&) {
            continue;  // a line torn by a kill
          }
          kept.push_back(line);
        }
        old.close();
        metrics.open(metrics_file, std::ios::trunc);
        for (auto& l : kept) metrics << l << "\n";
        metrics.flush();
        if (e.value("method", std::string()) == "lora")
          ctx.out << "LoRA: " << e.value("trainable_parameters", int64_t{0}) << " adapter parameters train, the "
                  << e.value("parameters", int64_t{0}) << "-parameter base stays frozen\n";
        ctx.out << "training " << e.value("parameters", int64_t{0}) << " parameters on " << e.value("device", "?")
                << (e.value("world_size", 1) > 1 ? " x " + std::to_string(e.value("world_size", 1)) + " processes" : "")
                << ": " << total << " steps of " << e.value("batch_size", 0) << " sequences (micro-batch "
                << e.value("micro_batch_size", 0) << ", accumulation " << e.value("grad_accum", 0) << ")\n";
        if (e.contains("resumed_from"))
          ctx.out << "resumed from " << e["resumed_from"].get<std::string>() << " at step " << from << "\n";
      }
    } else if (kind == "step" && lead) {
      last_step = e["step"].get<int64_t>();
      curve.emplace_back(static_cast<double>(last_step), e["loss"].get<double>());
      json m = e;
      m.erase("event");
      m.erase("rank");
      metrics << m.dump() << "\n" << std::flush;
      const bool line = last_step % log_every == 0 || last_step == total;
      if (tty || line) {
        const int width = 20;
        int filled = total > 0 ? static_cast<int>(width * last_step / total) : width;
        std::string bar = std::string(filled, '#') + std::string(width - filled, '-');
        ctx.out << (tty ? "\r" : "") << "step " << last_step << "/" << total << " [" << bar << "] "
                << fmt("%.3f", e["loss"].get<double>()) << " loss, lr " << fmt("%.2e", e["lr"].get<double>()) << ", "
                << fmt("%.0f", e["tokens_per_s"].get<double>()) << " tok/s"
                << (e.contains("mfu") ? ", MFU " + fmt("%.1f%%", 100 * e["mfu"].get<double>()) : "") << ", ETA "
                << duration_str(e["eta_s"].get<double>()) << (tty && !line ? "" : "\n") << std::flush;
      }
    } else if (kind == "eval" && lead) {
      evals.emplace_back(e["step"].get<double>(), e["eval_loss"].get<double>());
      metrics << json{{"step", e["step"]}, {"eval_loss", e["eval_loss"]}}.dump() << "\n" << std::flush;
      ctx.out << "eval loss at step " << e["step"] << ": " << fmt("%.4f", e["eval_loss"].get<double>()) << "\n";
    } else if (kind == "checkpoint" && lead) {
      ctx.out << "checkpoint " << e["path"].get<std::string>() << " (" << fmt("%.1f", e["seconds"].get<double>())
              << " s)\n";
    }
    return signals.signal() == 0;
  };
  json r = model.model_train(request, on_event);
  if (lead) {
    fs::path svg = out / "loss.svg";
    write_loss_svg(svg, curve, evals, "training loss, " + ctx.id);
    r["loss_curve"] = svg.string();
    r["metrics"] = metrics_file.string();
    if (r.contains("model")) {
      std::error_code ec;
      fs::copy_file(svg, fs::path(r["model"].get<std::string>()) / "loss.svg", fs::copy_options::overwrite_existing, ec);
      auto num = [&](const char* k) { return r.contains(k) && r[k].is_number() ? fmt("%.4f", r[k].get<double>()) : "n/a"; };
      ctx.out << "model: " << r["model"].get<std::string>() << " (final loss " << num("final_loss")
              << (r.contains("eval_loss") ? ", eval loss " + num("eval_loss") : "")
              << ")\nloss curve: " << svg.string() << "\n";
    }
    if (r.contains("adapter")) {  // method = lora
      std::error_code ec;
      fs::copy_file(svg, fs::path(r["adapter"].get<std::string>()) / "loss.svg", fs::copy_options::overwrite_existing, ec);
      auto num = [&](const char* k) { return r.contains(k) && r[k].is_number() ? fmt("%.4f", r[k].get<double>()) : "n/a"; };
      ctx.out << "adapter: " << r["adapter"].get<std::string>() << " (LoRA, " << r.value("trainable_parameters", int64_t{0})
              << " trained parameters; final loss " << num("final_loss")
              << (r.contains("eval_loss") ? ", eval loss " + num("eval_loss") : "")
              << ")\nloss curve: " << svg.string() << "\n";
    }
  }
  if (lead && signals.signal() == 0 && r.value("interrupted", false))
    ctx.out << "stopped at step " << r.value("steps", int64_t{0}) << " (stop_at_step); checkpoint "
            << r.value("checkpoint", std::string("?")) << "; run again without stop_at_step to go on\n";
  if (signals.signal() != 0 && r.value("interrupted", false))
    throw std::runtime_error(std::string(signals.signal() == SIGTERM ? "SIGTERM" : "SIGINT") + ": stopped at step " +
                             std::to_string(r.value("steps", int64_t{0})) + "; checkpoint " +
                             r.value("checkpoint", std::string("?")) + "; run the same command again to resume");
  return r;
}


// `serve`: the OpenAI-compatible API and the web chat page over model instances, until SIGINT
// or SIGTERM. Models are served under their instance names (models.NAME -> "NAME").
json run_serve(StageContext& ctx) {
  const auto& c = ctx.config;
  auto wanted = c["models"].get<std::vector<std::string>>();
  if (wanted.empty())
    for (const auto& d : ctx.declared)
      if (d.rfind("models.", 0) == 0) wanted.push_back(d);
  if (wanted.empty()) throw ConfigError(ctx.id + ".models: no model to serve: declare one under [models.NAME]");
  std::map<std::string, Instance*> models;
  for (const auto& ref : wanted) {
    Instance& inst = ctx.instance(ref);
    if (inst.plugin().kind != std::string(VHOST_KIND_MODEL))
      throw ConfigError(ctx.id + ".models: '" + ref + "' is a " + inst.plugin().kind + ", not a model");
    models[ref.substr(ref.find('.') + 1)] = &inst;
  }
  ServeOptions o;
  o.host = c["host"].get<std::string>();
  o.port = static_cast<int>(c["port"].get<int64_t>());
  o.api_keys = c["api_keys"].get<std::vector<std::string>>();
  o.threads = static_cast<int>(c["threads"].get<int64_t>());
  o.max_body = static_cast<std::size_t>(c["max_body"].get<int64_t>());
  o.log_file = c["log"].get<std::string>();
  o.blocked_words = c["blocked_words"].get<std::vector<std::string>>();
  for (const auto& ref : c["moderators"].get<std::vector<std::string>>()) {
    Instance& inst = ctx.instance(ref);
    if (inst.plugin().kind != std::string(VHOST_KIND_JUDGE))
      throw ConfigError(ctx.id + ".moderators: '" + ref + "' is a " + inst.plugin().kind + ", not a judge");
    try {  // a judge that cannot moderate is found now, not at the first prompt
      inst.judge_moderate({{"input", json::array()}});
    } catch (const std::exception& e) {
      throw ConfigError(ctx.id + ".moderators: '" + ref + "' cannot moderate: " + e.what());
    }
    o.moderators.push_back(&inst);
  }
  o.stream_interval = static_cast<int>(c["stream_interval"].get<int64_t>());
  o.stream_flush_ms = static_cast<int>(c["stream_flush_ms"].get<int64_t>());
  if (c["background"].get<bool>()) {
    // Serve while the rest of the pipeline runs (a local judge for evaluation, a demo).
    struct Background {
      std::unique_ptr<ApiServer> server;
      std::thread thread;
      ~Background() {
        server->stop();
        if (thread.joinable()) thread.join();
      }
    };
    auto bg = std::make_shared<Background>();
    bg->server = std::make_unique<ApiServer>(models, o);
    int port = bg->server->bind();
    ApiServer* srv = bg->server.get();
    bg->thread = std::thread([srv] { srv->run(); });
    std::string url = "http://" + o.host + ":" + std::to_string(port);
    ctx.out << "serving in the background on " << url << " until the pipeline ends\n";
    ctx.keep(bg);
    return {{"port", port}, {"url", url}, {"background", true}};
  }
  ApiServer server(models, o);
  int port = server.bind();
  StopSignals signals;
  std::atomic<bool> done{false};
  std::unique_ptr<WorkerMembership> membership;
  std::mutex membership_mu;
  std::thread watcher([&] {
    while (!done && signals.signal() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    {
      // A worker leaves its controller first, so that no new request is sent to it, then stops.
      std::lock_guard<std::mutex> g(membership_mu);
      if (membership) membership->leave();
    }
    server.stop();
  });
  const std::string controller = c["controller"].get<std::string>();
  if (!controller.empty()) {
    std::string advertise = c["advertise"].get<std::string>();
    if (advertise.empty()) advertise = "http://" + (o.host == "0.0.0.0" ? std::string("127.0.0.1") : o.host) + ":" + std::to_string(port);
    std::vector<std::string> names = server.model_ids();  // adapters too
    int capacity = 0;
    for (auto& [n, inst] : models) capacity += inst->model_tokenizer_info().value("max_batch", 1);
    std::lock_guard<std::mutex> g(membership_mu);
    membership = std::make_unique<WorkerMembership>(controller, advertise, names, std::max(1, capacity),
                                                    c["heartbeat"].get<double>(),
                                                    [&server] { return server.metrics().value("active", int64_t{0}); });
    ctx.out << "worker of " << controller << " at " << advertise << "\n";
  }
  std::string names;
  for (const auto& n : server.model_ids()) names += (names.empty() ? "" : ", ") + n;
  ctx.out << "serving " << names << " on http://" << o.host << ":" << port << "  (OpenAI API under /v1, chat page at /)"
          << (o.api_keys.empty() ? "" : ", API keys required") << "\n" << std::flush;
  server.run();
  done = true;
  watcher.join();
  membership.reset();
  json m = server.metrics();
  m["port"] = port;
  ctx.out << "stopped serving after " << m["requests"] << " requests\n";
  return m;
}

}  // namespace

// A sampling option with the one range every entry point checks (vhost/host/sampling.hpp).
static OptionSpec sampling_option(const sampling::Range& r, const char* type, json default_value) {
  OptionSpec o = option_spec(r.key, type, std::move(default_value), r.help, r.min, r.max);
  o.min_open = r.min_open;
  return o;
}

const std::vector<StageType>& stage_types() {
  static const std::vector<StageType> types = {
      {"info",
       "Creates plugin instances and prints what each reports (device, threads, versions).",
       {option_spec("instances", "string_list", json::array(),
            "instance ids to describe, e.g. [\"backends.cpu\"]; empty: every instance")},
       {},
       {"instances"},
       run_info},
      {"probe",
       "Sends one prompt to a judge and prints the reply and latency.",
       {option_spec("judge", "string", "", "the judge instance (a name under [judges]); empty: the only one"),
        option_spec("prompt", "string", "Reply with the single word: ready", "the prompt"),
        option_spec("max_tokens", "integer", 16, "reply length limit", 1, 1 << 20)},
       {{"judge", VHOST_KIND_JUDGE}},
       {},
       run_probe},
      {"model-init",
       "Writes a randomly initialised checkpoint of a preset shape (kept if it already exists).",
       {option_spec("plugin", "string", "llama", "the model plugin"),
        option_spec("preset", "string", "tiny", "tiny, stories15m, 7b, 13b"),
        option_spec("out", "path", std::nullopt, "checkpoint folder"),
        option_spec("seed", "integer", 0, "initialisation seed", 0, 9007199254740991.0),
        option_spec("dtype", "string", "float32", "float32, bfloat16, float16"),
        option_spec("context", "integer", 0, "positions (0: the preset's)", 0, 1 << 20),
        option_spec("tokenizer", "path", "", "tokenizer.model to copy"),
        option_spec("tokenizer_text", "path", "", "text file to train a tokenizer on"),
        option_spec("overwrite", "boolean", false, "replace an existing checkpoint")},
       {},
       {},
       run_model_init},
      {"generate",
       "Continues prompts with a model and prints the text (streamed when there is one prompt).",
       {option_spec("model", "string", "", "the model instance (a name under [models]); empty: the only one"),
        option_spec("prompts", "string_list", std::nullopt, "the prompts"),
        option_spec("max_tokens", "integer", 64, "tokens to generate at most", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureGenerate),
        sampling_option(sampling::kTopP, "float", 1.0),
        sampling_option(sampling::kTopK, "integer", 0),
        sampling_option(sampling::kRepetitionPenalty, "float", 1.0),
        option_spec("seed", "integer", -1, "sampling seed (-1: random)", -1, 9007199254740991.0),
        option_spec("stop", "string_list", json::array(), "stop before any of these"),
        option_spec("stream", "boolean", true, "print text as it is generated (one prompt)")},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_generate},
      {"prepare",
       "Cleans a dataset, splits it to the context length and tokenizes it with labels (train/, eval/, stats.json).",
       {option_spec("dataset", "string", "", "the dataset instance (a name under [datasets]); empty: the only one"),
        option_spec("model", "string", "", "the model whose tokenizer and template to use; empty: the only one"),
        option_spec("out", "path", std::nullopt, "output folder")},
       {{"dataset", VHOST_KIND_DATASET}, {"model", VHOST_KIND_MODEL}},
       {},
       run_prepare},
      {"chat",
       "An interactive multi-turn chat on the terminal with a model and its conversation template.",
       {option_spec("model", "string", "", "the model instance; empty: the only one"),
        option_spec("template", "string", "", "conversation template; empty: the model's"),
        option_spec("system", "string", "", "system message (empty: the template's)"),
        option_spec("max_tokens", "integer", 512, "reply length limit", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureChat),
        sampling_option(sampling::kTopP, "float", 1.0),
        sampling_option(sampling::kRepetitionPenalty, "float", 1.0),
        option_spec("seed", "integer", -1, "sampling seed (-1: random)", -1, 9007199254740991.0),
        option_spec("prompt", "boolean", true, "print the role names before each turn")},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_chat},
      {"serve",
       "Serves models over an OpenAI-compatible HTTP API with a web chat page, until SIGINT/SIGTERM.",
       {option_spec("models", "string_list", json::array(), "model instances to serve (empty: every model)"),
        option_spec("host", "string", "127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
        option_spec("port", "integer", 8000, "port (0: any free one; the chosen one is printed)", 0, 65535),
        option_spec("api_keys", "string_list", json::array(), "accepted Bearer keys (empty: no authentication)"),
        option_spec("threads", "integer", 64, "connections served at once", 1, 100000),
        option_spec("max_body", "integer", 1048576, "largest request body in bytes", 1024, 1e9),
        option_spec("log", "path", "", "append every conversation to this JSONL file (empty: none)"),
        option_spec("blocked_words", "string_list", json::array(), "moderation: refuse prompts containing any of these"),
        option_spec("moderators", "string_list", json::array(),
                    "moderation: judge instances (judges.NAME) that check every prompt; one flagging it refuses it"),
        option_spec("stream_interval", "integer", 16,
                    "streaming: write a stream's pending tokens (each its own SSE event) once this many wait (1: every token at once)",
                    1, 256),
        option_spec("stream_flush_ms", "integer", 20,
                    "streaming: or once this many ms have passed since the stream's last write (0: by count only)", 0, 10000),
        option_spec("background", "boolean", false, "serve while the next stages run, stop when the pipeline ends"),
        option_spec("controller", "string", "", "register with this controller as a worker (http://host:port)"),
        option_spec("advertise", "string", "", "the URL the controller hands out for this worker (default: http://host:port)"),
        option_spec("heartbeat", "float", 5.0, "seconds between heartbeats to the controller", 0.05, 3600)},
       {},
       {"models", "moderators"},
       run_serve},
      {"eval",
       "Answers a question set with models, grades the answers with a judge, and reports (Markdown, JSON, HTML).",
       {option_spec("questions", "path", std::nullopt, "FastChat question JSONL (question_id, category, turns)"),
        option_spec("limit", "integer", 0, "only the first N questions (0: all)", 0, 1e9),
        option_spec("models", "string_list", json::array(), "model instances that answer (empty: every model)"),
        option_spec("answers", "string_list", json::array(), "FastChat answer JSONL files to grade as well"),
        option_spec("endpoints", "string_list", json::array(),
                    "chat endpoints that answer too: judge-kind instances (e.g. the openai plugin at vhost serve)"),
        option_spec("judge", "string", "", "the judge instance; empty: the only one"),
        one_of(option_spec("mode", "string", "vicuna", "vicuna (two scores), single ([[rating]]), pairwise ([[A]]/[[B]]/[[C]])"),
               {"vicuna", "single", "pairwise"}),
        option_spec("baseline", "string", "", "pairwise modes: the model the others are compared with (default: the first)"),
        one_of(option_spec("pairs", "string", "baseline",
                           "pairwise modes: every model against the baseline (FastChat's pairwise-baseline), or all "
                           "pairs of models (pairwise-all)"),
               {"baseline", "all"}),
        option_spec("both_orders", "boolean", true, "pairwise modes: judge each pair in both orders"),
        option_spec("reference_answers", "path", "",
                    "FastChat reference_answer/JUDGE.jsonl: reference answers by question id for math, reasoning and "
                    "coding (instead of the questions' own `reference`)"),
        option_spec("judge_prompts", "path", "", "FastChat judge_prompts.jsonl to use instead of the built-in prompts"),
        option_spec("out", "path", std::nullopt, "answers/, judgments.jsonl, report.md/json/html"),
        option_spec("concurrency", "integer", 8, "judge requests in flight", 1, 1024),
        option_spec("parse_retries", "integer", 2, "ask again when the judge's reply has no verdict", 0, 10),
        option_spec("retry_errors", "boolean", false,
                    "ask again the stored judgments that recorded an error (the old ones go to judgments.previous.jsonl)"),
        option_spec("max_tokens", "integer", 512, "answer length per turn", 1, 1 << 20),
        sampling_option(sampling::kTemperature, "float", sampling::kTemperatureEval),
        option_spec("judge_max_tokens", "integer", 1024, "judge reply length", 1, 1 << 20)},
       {{"judge", VHOST_KIND_JUDGE}},
       {"models", "endpoints"},
       run_eval},
      {"train",
       "Fine-tunes a model on a prepared dataset (assistant-only loss), resumable from its checkpoints.",
       {option_spec("model", "string", "", "the model instance to start from; empty: the only one"),
        option_spec("data", "path", std::nullopt, "a prepared dataset folder (the prepare stage's out)"),
        option_spec("out", "path", std::nullopt, "checkpoints/, model/, metrics.jsonl, loss.svg"),
        option_spec("epochs", "integer", 3, "passes over the training split", 1, 100000),
        option_spec("max_steps", "integer", 0, "stop after this many optimizer steps (0: epochs decide)", 0, 1e12),
        option_spec("stop_at_step", "integer", 0, "checkpoint and stop at this step; rerun without it to go on", 0, 1e12),
        option_spec("batch_size", "integer", 128, "sequences per optimizer step, all processes together", 1, 1e12),
        option_spec("micro_batch_size", "integer", 1, "sequences per forward pass per process", 1, 1e12),
        option_spec("lr", "float", 2e-5, "peak learning rate", 0, 10),
        option_spec("warmup_ratio", "float", 0.03, "share of the steps spent warming up", 0, 1),
        option_spec("warmup_steps", "integer", -1, "warm-up steps (>= 0 overrides warmup_ratio)", -1, 1e12),
        one_of(option_spec("schedule", "string", "cosine", "after warm-up: cosine, linear, constant"),
               {"cosine", "linear", "constant"}),
        option_spec("weight_decay", "float", 0.0, "AdamW weight decay (never on norms)", 0, 10),
        option_spec("beta1", "float", 0.9, "AdamW beta1", 0, 0.999999),
        option_spec("beta2", "float", 0.999, "AdamW beta2", 0, 0.999999999),
        option_spec("eps", "float", 1e-8, "AdamW epsilon", 1e-30, 1),
        option_spec("max_grad_norm", "float", 1.0, "gradient clipping (0: none)", 0, 1e9),
        option_spec("gradient_checkpointing", "boolean", true, "recompute each layer in backward (less memory)"),
        one_of(option_spec("padding", "string", "longest", "pad micro-batches to the longest sequence, or max_length"),
               {"longest", "max_length"}),
        option_spec("group_by_length", "boolean", true, "sort each step's sequences by length"),
        option_spec("save_every", "integer", 0, "steps between checkpoints (0: at the end and on SIGTERM)", 0, 1e12),
        option_spec("keep_last", "integer", 2, "checkpoints to keep", 1, 1000000),
        option_spec("eval_every", "integer", 0, "steps between evaluations (0: at the end)", 0, 1e12),
        option_spec("seed", "integer", 42, "data order seed", 0, 9007199254740991.0),
        option_spec("peak_tflops", "float", 0.0, "device peak for MFU (0: the backend's: A100 312, H100/H200 989; none on CPU)", 0, 1e7),
        one_of(option_spec("method", "string", "full",
                           "full: every weight trains; lora: the base stays frozen and LoRA adapters train (out/adapter, "
                           "a PEFT folder)"),
               {"full", "lora"}),
        option_spec("r", "integer", 8, "method = lora: the adapters' rank", 1, 1 << 20),
        option_spec("alpha", "float", 16.0, "method = lora: the update is scaled by alpha / r", 1e-9, 1e9),
        option_spec("dropout", "float", 0.05, "method = lora: dropout on the adapters' input", 0, 0.999),
        option_spec("target_modules", "string_list", json::array({"q_proj", "v_proj"}),
                    "method = lora: the projections that get adapters (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                    "up_proj, down_proj, or all-linear)"),
        option_spec("modules_to_save", "string_list", json::array(),
                    "method = lora: modules trained whole beside the adapters (embed_tokens, lm_head)"),
        option_spec("log_every", "integer", 0, "steps between progress lines when not on a terminal (0: 20 lines)", 0,
                    1e12)},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_train,
       /*every_rank=*/true},
  };
  return types;
}

const StageType* find_stage_type(const std::string& type) {
  for (const auto& t : stage_types())
    if (t.type == type) return &t;
  return nullptr;
}

}  // namespace vhost::host
