// The train stage: a model plugin fine-tunes itself on a prepared dataset; this stage prints
// its progress, stops it cleanly on SIGTERM/SIGINT and draws loss.svg.
#include "stages/stages.hpp"

#include "stages/common/stop_signals.hpp"
#include "stages/common/text.hpp"
#include "stages/train/loss_svg.hpp"

#include <vhost/host/host.hpp>
#include <vhost/host/sampling.hpp>

#include <vhost/conversation.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

namespace vhost::host {

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
        if (e.contains("attention") && e["attention"].is_string())
          ctx.out << "attention kernel: " << e["attention"].get<std::string>() << "\n";
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

}  // namespace

std::vector<StageType> train_stage_types() {
  return {
      {"train",
       "Fine-tunes a model on a prepared dataset (assistant-only loss), resumable from its checkpoints. The recipe "
       "(epochs, batch sizes, learning rate and schedule, LoRA...) is the model plugin's: its tool train-options lists "
       "the keys this table then takes too, with their defaults and ranges.",
       {option_spec("model", "string", "", "the model instance to start from; empty: the only one"),
        option_spec("data", "path", std::nullopt, "a prepared dataset folder (the prepare stage's out)"),
        option_spec("out", "path", std::nullopt, "checkpoints/, model/, metrics.jsonl, loss.svg"),
        option_spec("log_every", "integer", 0, "steps between progress lines when not on a terminal (0: 20 lines)", 0,
                    1e12)},
       {{"model", VHOST_KIND_MODEL}},
       {},
       run_train,
       /*every_rank=*/true,
       /*plugin_options=*/{"model", "train-options"}},
  };
}

}  // namespace vhost::host
