#include "stages/stages.hpp"

namespace vhost::host {

const std::vector<StageType>& stage_types() {
  static const std::vector<StageType> types = [] {
    std::vector<StageType> all;
    for (auto part : {basic_stage_types, serve_stage_types, eval_stage_types, perplexity_stage_types, report_stage_types, train_stage_types})
      for (auto& t : part()) all.push_back(std::move(t));
    return all;
  }();
  return types;
}

const StageType* find_stage_type(const std::string& type) {
  for (const auto& t : stage_types())
    if (t.type == type) return &t;
  return nullptr;
}

}  // namespace vhost::host
