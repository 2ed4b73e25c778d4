// Internal: the stage types the host runs. A stage orchestrates plugin instances through their
// kind tables; it never knows which plugin implements them.
#pragma once

#include "config.hpp"
#include "instance.hpp"

#include <functional>
#include <map>
#include <memory>
#include <istream>
#include <ostream>
#include <string>
#include <vector>

namespace vhost::host {

struct StageContext {
  std::string id;
  json config;  // validated; instance references resolved to full ids ("judges.gpt4")
  fs::path work_dir;
  std::ostream& out;
  std::vector<std::string> declared;                    // every instance id in the pipeline
  std::function<Instance&(const std::string&)> instance;  // created on first use, kept for the run
  std::function<json(const std::string& plugin, const std::string& tool, const json& args)> model_tool;
  std::istream& in;  // interactive input (the chat stage)
  // Keeps an object (a background server) alive until the pipeline ends; it is destroyed
  // before the instances.
  std::function<void(std::shared_ptr<void>)> keep = nullptr;
};

struct StageType {
  std::string type, help;
  Schema schema;
  // Options that name an instance, and the kind it must be. An empty value means "the only
  // instance of that kind" and is an error when there are none or several.
  std::map<std::string, std::string> refs;
  // Options holding lists of instance ids ("backends.cpu"), any kind.
  std::vector<std::string> ref_lists;
  std::function<json(StageContext&)> run;
  // Under several processes (vhost launch, torchrun) a stage runs on every rank only when it is
  // collective (train); any other stage writes files every rank reads, so one rank runs it while
  // the others wait at the backend's barrier.
  bool every_rank = false;
};

const std::vector<StageType>& stage_types();

// Round ticks for a chart's axis (1, 2 or 5 times a power of ten, at most `most` intervals):
// the range widened to whole steps, each tick's value and its label.
struct AxisTicks {
  double lo = 0, hi = 1;
  std::vector<double> values;
  std::vector<std::string> labels;
};
AxisTicks nice_ticks(double lo, double hi, int most);

// The train stage's loss.svg: training loss per step (line) and evaluation loss (dots).
void write_loss_svg(const fs::path& file, const std::vector<std::pair<double, double>>& loss,
                    const std::vector<std::pair<double, double>>& eval, const std::string& title);
const StageType* find_stage_type(const std::string& type);

}  // namespace vhost::host
