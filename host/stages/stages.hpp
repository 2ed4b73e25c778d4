// Internal: the stage folders, each contributing its stage types to the list the runtime runs
// (runtime/stage.hpp). A new stage is a folder here and one line in stages.cpp.
#pragma once

#include "runtime/stage.hpp"

#include <vector>

namespace vhost::host {

std::vector<StageType> basic_stage_types();  // info, probe, model-init, generate, prepare, chat
std::vector<StageType> train_stage_types();  // train
std::vector<StageType> serve_stage_types();   // serve, controller, api
std::vector<StageType> eval_stage_types();    // eval
std::vector<StageType> perplexity_stage_types();  // perplexity
std::vector<StageType> report_stage_types();  // eval-report, agreement, arena

}  // namespace vhost::host
