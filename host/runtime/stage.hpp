// Internal: what a stage is to the runtime (its options, the instances it names, the function
// that runs it) and what it gets while it runs. A stage orchestrates plugin instances through
// their kind tables; it never knows which plugin implements them. The stages themselves live
// in host/stages/<name>/.
#pragma once

#include "runtime/config.hpp"
#include "runtime/instance.hpp"

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
  // Options a plugin adds to this stage: {instance option, tool}: the instance the stage's option
  // names (a model) lists them through its plugin's tool, in the plugin options format, and the
  // stage's table is checked against both (the train stage's recipe, which only the model plugin
  // knows). Empty: none.
  std::pair<std::string, std::string> plugin_options = {};
};

// The stage types this host knows: host/stages/ defines them (stages.hpp there lists each
// folder's), the runtime only runs them.
const std::vector<StageType>& stage_types();
const StageType* find_stage_type(const std::string& type);

}  // namespace vhost::host
