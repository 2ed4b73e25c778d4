// The `vhost` command: a thin shell over the embedding API in vhost/host/host.hpp.
#include "launch.hpp"
#include "shortcut.hpp"

#include <vhost/conversation.hpp>
#include <vhost/host/host.hpp>

#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <cctype>

namespace vh = vhost::host;
using vhost::cli::absolute;
using vhost::cli::Shortcut;
using vhost::cli::StageFlags;

namespace {

// Exit codes: 0 success, 1 a stage or plugin failed, 2 the command line or pipeline is wrong.
constexpr int kFailed = 1;
constexpr int kBadInput = 2;

// A command that only groups subcommands (vhost model, tokenizer, template, eval, arena).
CLI::App* group(CLI::App& app, const std::string& name, const std::string& help) {
  CLI::App* g = app.add_subcommand(name, help);
  g->require_subcommand(1);
  return g;
}

void print_plugins(const vh::Host& host, bool as_json, bool verbose) {
  auto plugins = host.plugins();
  if (as_json) {
    vh::json arr = vh::json::array();
    for (const auto& p : plugins) {
      vh::json shadowed = vh::json::array();
      for (const auto& s : p.shadowed) shadowed.push_back(s.string());
      arr.push_back({{"kind", p.kind}, {"name", p.name}, {"version", p.version}, {"abi", p.abi},
                     {"torch_abi", p.torch_abi}, {"file", p.file.string()}, {"origin", p.origin},
                     {"description", p.description}, {"options", p.options}, {"shadowed", shadowed},
                     {"error", p.error}});
    }
    vh::json dirs = vh::json::array();
    for (const auto& [d, origin] : host.search_path()) dirs.push_back({{"dir", d.string()}, {"origin", origin}});
    std::cout << vh::json{{"search_path", dirs}, {"plugins", arr}}.dump(2) << "\n";
    return;
  }
  std::cout << "search path:\n";
  for (const auto& [d, origin] : host.search_path()) std::cout << "  " << d.string() << "  (" << origin << ")\n";
  if (plugins.empty()) std::cout << "no plugins found (file names: vhost_<kind>_<name>.so)\n";
  for (const auto& p : plugins) {
    std::cout << p.kind << "  " << p.name;
    if (p.error.empty())
      std::cout << "  " << p.version << "  ABI " << p.abi << "  " << p.file.string() << "\n    " << p.description
                << "\n";
    else
      std::cout << "  UNUSABLE  " << p.file.string() << "\n    " << p.error << "\n";
    for (const auto& s : p.shadowed) std::cout << "    shadows " << s.string() << "\n";
    if (verbose && p.error.empty()) {
      if (!p.torch_abi.empty()) std::cout << "    torch ABI: " << p.torch_abi << "\n";
      for (const auto& o : p.options) {
        std::cout << "    " << o["key"].get<std::string>() << " (" << o["type"].get<std::string>() << ")";
        if (o.contains("default")) std::cout << " = " << o["default"].dump();
        else std::cout << " [required]";
        std::cout << ": " << o["help"].get<std::string>() << "\n";
      }
    }
  }
}

}  // namespace

// Every subcommand: its options (members, declared on its CLI::App by one declare_* per group)
// and what it does (one cmd_* each). main() parses, makes the host and dispatches.
struct Cli {
  std::vector<std::string> plugin_dirs;
  std::string log_level = "info";
  std::string file;
  std::vector<std::string> sets, only;
  bool print_resolved = false, as_json = false, verbose = false;
  CLI::App* run = nullptr;
  vhost::cli::LaunchOptions lo;
  CLI::App* launch = nullptr;
  CLI::App* validate = nullptr;
  CLI::App* plugins = nullptr;
  CLI::App* stages = nullptr;
  std::string model_plugin = "llama", backend_plugin = "cpu";
  CLI::App* model = nullptr;
  std::string preset = "tiny", out_dir, dtype = "float32", tok_file, tok_text;
  int64_t seed = 0;
  CLI::App* model_init = nullptr;
  bool init_overwrite = false, convert_overwrite = false;
  std::string convert_in, convert_out;
  CLI::App* model_convert = nullptr;
  std::string convert_quantize;
  std::string merge_base, merge_adapter, merge_out;
  bool merge_overwrite = false;
  CLI::App* model_merge = nullptr;
  CLI::App* tokenizer = nullptr;
  std::string tok_model, tok_input;
  bool tok_bos = false, tok_eos = false;
  int64_t tok_vocab = 32000;
  CLI::App* tok_encode = nullptr;
  bool tok_jsonl = false;
  CLI::App* tok_decode = nullptr;
  CLI::App* tok_train = nullptr;
  // The flags of the shortcuts that map onto a stage's options, made from its schema.
  std::optional<StageFlags> gen_flags, ppl_flags, chat_flags, serve_flags, worker_flags, report_flags, agree_flags,
      arena_flags, ctl_flags, api_flags;
  CLI::App* gen = nullptr;
  std::string gen_model;
  CLI::App* ppl = nullptr;
  std::string ppl_model;
  std::string gen_adapter, chat_adapter;
  // Shared by the subcommands that run a model (one runs per process): --threads, --model-option.
  int64_t threads = 0;
  std::vector<std::string> model_option_args;
  CLI::App* prep = nullptr;
  std::string prep_input, prep_model, prep_out, prep_template, prep_html = "auto", prep_templates, prep_rules = "vhost";
  int64_t prep_max_length = 2048, prep_max_turns = 0;
  double prep_eval = 0.0;
  std::vector<std::string> prep_langs, prep_skip_langs, prep_blocked;
  bool prep_no_dedupe = false, prep_reduce_rep = false;
  CLI::App* tmpl = nullptr;
  std::string tmpl_name = "vicuna_v1.1", tmpl_file;
  bool tmpl_mask = false, tmpl_json = false;
  CLI::App* tmpl_render = nullptr;
  CLI::App* tmpl_list = nullptr;
  CLI::App* serve = nullptr;
  CLI::App* worker = nullptr;
  std::vector<std::string> serve_models, serve_adapters;
  std::string serve_template, serve_templates, serve_moderation, serve_moderation_model = "omni-moderation-latest",
              serve_decode_dtype = "auto";
  int64_t serve_batch = 16, serve_queue = 64;
  CLI::App* eval = nullptr;
  CLI::App* eval_report_cmd = nullptr;
  CLI::App* agree_cmd = nullptr;
  CLI::App* arena_cmd = nullptr;
  CLI::App* arena_report_cmd = nullptr;
  CLI::App* controller = nullptr;
  CLI::App* api = nullptr;
  CLI::App* chat = nullptr;
  std::string chat_model, chat_templates;
  CLI::App* ver = nullptr;

  // --plugin and --model-option: the model plugin a shortcut uses, and its options.
  void declare_model_plugin(CLI::App* sub) {
    sub->add_option("--plugin", model_plugin, "model plugin")->capture_default_str();
    sub->add_option("--model-option", model_option_args,
                    "KEY=VALUE: an option of the model plugin, as in [models.NAME] of a pipeline (repeatable; "
                    "true/false and numbers as such, anything else a string; vhost plugins -v lists them)");
  }
  // ... and --backend and --threads, for the shortcuts that run the model.
  void declare_runtime(CLI::App* sub) {
    declare_model_plugin(sub);
    sub->add_option("--backend", backend_plugin, "backend plugin (cpu, cuda, ...: vhost plugins lists them)")->capture_default_str();
    sub->add_option("--threads", threads, "CPU threads (0: one per usable core that other processes do not keep busy)")->capture_default_str();
  }
  // Whether FLAG was given to the subcommand that runs (serve and worker share their flags).
  bool given(CLI::App* sub, const std::string& flag) const {
    if (sub == serve || sub == worker) return serve->get_option(flag)->count() + worker->get_option(flag)->count() > 0;
    return sub->get_option(flag)->count() > 0;
  }
  // The option keys a plugin publishes, from one look at the search path per process.
  const std::set<std::string>& option_keys(const vh::Host& host, const std::string& kind, const std::string& name) {
    if (!plugin_keys) {
      plugin_keys.emplace();
      for (const auto& p : host.plugins())
        if (p.error.empty())
          for (const auto& o : p.options) (*plugin_keys)[{p.kind, p.name}].insert(o.value("key", ""));
    }
    return (*plugin_keys)[{kind, name}];
  }
  std::optional<std::map<std::pair<std::string, std::string>, std::set<std::string>>> plugin_keys;

  void declare_pipeline(CLI::App& app) {
    app.add_option("--plugin-dir", plugin_dirs, "search this plugin folder first (repeatable)");
    app.add_option("--log-level", log_level, "how much to log")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
        ->capture_default_str();


    run = app.add_subcommand("run", "run the stages of a pipeline file in order");
    run->add_option("file", file, "pipeline TOML file")->required();
    run->add_option("--set", sets, "override a value: section.key=value (repeatable)");
    run->add_option("--only", only, "run only this stage (repeatable)");

    launch = app.add_subcommand("launch", "run a pipeline as several processes (data-parallel training), torchrun-style");
    launch->add_option("file", file, "pipeline TOML file")->required();
    launch->add_option("--nproc-per-node", lo.nproc_per_node, "processes on this host")->capture_default_str();
    launch->add_option("--nnodes", lo.nnodes, "hosts in the job")->capture_default_str();
    launch->add_option("--node-rank", lo.node_rank, "this host's index")->capture_default_str();
    launch->add_option("--master-addr", lo.master_addr, "rank 0's host")->capture_default_str();
    launch->add_option("--master-port", lo.master_port, "rank 0's port (default: MASTER_PORT, else a free one)");
    launch->add_option("--log-dir", lo.log_dir, "write ranks 1.. output to DIR/rank-N.log (default: discard their stdout)");
    launch->add_option("--set", sets, "override a value: section.key=value (repeatable)");
    launch->add_option("--only", only, "run only this stage (repeatable)");

    validate = app.add_subcommand("validate", "check a pipeline file without running it");
    validate->add_option("file", file, "pipeline TOML file")->required();
    validate->add_option("--set", sets, "override a value: section.key=value (repeatable)");
    validate->add_flag("--print", print_resolved, "print the effective configuration as JSON");

    plugins = app.add_subcommand("plugins", "list every plugin on the search path");
    plugins->add_flag("--json", as_json, "machine-readable output");
    plugins->add_flag("-v,--verbose", verbose, "also list each plugin's options");

    stages = app.add_subcommand("stages", "list the stage types and their options");
  }

  void declare_model(CLI::App& app) {
    // Model and tokenizer tools (plugin-level tools of a model plugin).
    model = group(app, "model", "make and convert model checkpoints");
    model_init = model->add_subcommand("init", "write a randomly initialised checkpoint of a preset shape");
    model_init->add_option("--preset", preset, "a preset shape of the model plugin (one it does not know is refused with the list)")->capture_default_str();
    model_init->add_option("--out", out_dir, "checkpoint folder to write")->required();
    model_init->add_option("--seed", seed, "initialisation seed")->capture_default_str();
    model_init->add_option("--dtype", dtype, "float32, bfloat16, float16")->capture_default_str();
    auto* tok_opt = model_init->add_option("--tokenizer", tok_file, "tokenizer.model to copy (sets the vocabulary)");
    model_init->add_option("--tokenizer-text", tok_text, "text file to train a tokenizer on")->excludes(tok_opt);
    model_init->add_option("--plugin", model_plugin, "model plugin")->capture_default_str();
    model_init->add_flag("--overwrite", init_overwrite, "replace --out if it exists");

    model_convert = model->add_subcommand("convert", "convert a checkpoint: GGUF file -> HF folder, or HF folder -> GGUF file");
    model_convert->add_option("in", convert_in, "a GGUF file or an HF checkpoint folder")->required();
    model_convert->add_option("out", convert_out, "the HF folder or GGUF file to write")->required();
    model_convert->add_option("--plugin", model_plugin, "model plugin")->capture_default_str();
    model_convert->add_flag("--overwrite", convert_overwrite, "replace out if it exists");
    model_convert->add_option("--quantize", convert_quantize,
                              "HF folder -> GGUF: write the matrices quantized (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, or llama.cpp's q4_k_m / q5_k_m mix, as the gguf package "
                              "and llama.cpp's reference quantizer make them; 1-D tensors stay F32; the model plugin checks the name)");

    model_merge = model->add_subcommand("merge", "merge a LoRA adapter into its base: a whole HF checkpoint (PEFT's merge_and_unload)");
    model_merge->add_option("base", merge_base, "the base: an HF checkpoint folder or a GGUF file")->required();
    model_merge->add_option("adapter", merge_adapter, "a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors)")
        ->required();
    model_merge->add_option("out", merge_out, "the HF folder to write")->required();
    model_merge->add_option("--plugin", model_plugin, "model plugin")->capture_default_str();
    model_merge->add_flag("--overwrite", merge_overwrite, "replace out if it exists");

    tokenizer = group(app, "tokenizer", "encode, decode, train SentencePiece tokenizers");
    tok_encode = tokenizer->add_subcommand("encode", "text on stdin -> JSON array of ids");
    tok_encode->add_option("--model", tok_model, "tokenizer.model, or a checkpoint folder")->required();
    tok_encode->add_flag("--bos", tok_bos, "prepend BOS");
    tok_encode->add_flag("--eos", tok_eos, "append EOS");
    tok_encode->add_flag("--jsonl", tok_jsonl, "stdin: one JSON string per line; stdout: one JSON array of ids per line");
    tok_decode = tokenizer->add_subcommand("decode", "JSON array of ids on stdin -> text");
    tok_decode->add_option("--model", tok_model, "tokenizer.model, or a checkpoint folder")->required();
    tok_train = tokenizer->add_subcommand("train", "train a LLaMA-style SentencePiece BPE");
    tok_train->add_option("--input", tok_input, "text file")->required();
    tok_train->add_option("--vocab", tok_vocab, "vocabulary size")->capture_default_str();
    tok_train->add_option("--out", out_dir, "folder for tokenizer.model")->required();
  }

  void declare_perplexity(CLI::App& app) {
    ppl = app.add_subcommand("perplexity", "a model's perplexity on a text file (llama-perplexity's method)");
    ppl->add_option("model_dir", ppl_model, "checkpoint folder or GGUF file")->required();
    ppl_flags.emplace(ppl, "perplexity", std::vector<StageFlags::Flag>{{"text"}, {"context"}, {"chunks"}});
    declare_runtime(ppl);
  }
  void declare_generate(CLI::App& app) {
    gen = app.add_subcommand("generate", "continue a prompt with a model");
    gen->add_option("model_dir", gen_model, "checkpoint folder")->required();
    gen_flags.emplace(gen, "generate",
                      std::vector<StageFlags::Flag>{{"prompts", "--prompt"}, {"max_tokens"}, {"temperature"}, {"top_p"},
                                                    {"top_k"}, {"repetition_penalty"}, {"seed"}, {"stop"}});
    declare_runtime(gen);
    gen->add_option("--adapter", gen_adapter, "a LoRA adapter folder merged into the model (the llama option adapter)");
    // Data preparation (a one-stage pipeline, like generate).
    prep = app.add_subcommand("prepare", "clean, split and tokenize ShareGPT conversations for training");
    prep->add_option("input", prep_input, "ShareGPT JSON file")->required();
    prep->add_option("--model", prep_model, "checkpoint folder or GGUF file whose tokenizer to use")->required();
    prep->add_option("--out", prep_out, "output folder (train/, eval/, stats.json, cleaned.json)")->required();
    prep->add_option("--template", prep_template, "conversation template (default: the model's, vicuna_v1.1)");
    prep->add_option("--templates", prep_templates, "TOML file of custom templates ([NAME] tables)");
    prep->add_option("--max-length", prep_max_length, "tokens per sequence")->capture_default_str();
    prep->add_option("--eval-fraction", prep_eval, "share held out in eval/")->capture_default_str();
    prep->add_option("--html", prep_html, "auto, always, never")->capture_default_str();
    prep->add_option("--rules", prep_rules, "vhost, or fastchat: FastChat's own cleaning and splitting decisions")
        ->capture_default_str();
    prep->add_option("--language", prep_langs, "keep only this language (cld2 code; repeatable)");
    prep->add_option("--skip-language", prep_skip_langs, "drop this language (cld2 code; repeatable)");
    prep->add_flag("--reduce-rep", prep_reduce_rep, "drop conversations with a digit repeated 9 times in a row");
    prep->add_option("--blocked-word", prep_blocked, "drop conversations containing it (repeatable)");
    prep->add_option("--max-turns", prep_max_turns, "drop conversations with more turns (0: no limit)");
    prep->add_flag("--no-dedupe", prep_no_dedupe, "keep exact duplicates");
    declare_model_plugin(prep);

    tmpl = group(app, "template", "conversation templates (FastChat's formats)");
    tmpl_render = tmpl->add_subcommand("render", "one ShareGPT conversation (JSON) on stdin -> the prompt");
    tmpl_render->add_option("--template", tmpl_name, "template name")->capture_default_str();
    tmpl_render->add_option("--templates", tmpl_file, "TOML file of custom templates ([NAME] tables)");
    tmpl_render->add_flag("--mask", tmpl_mask, "mark the trained spans (the assistant's replies) with [[ ]]");
    tmpl_render->add_flag("--json", tmpl_json, "print the segments as JSON (text, role, trained, special)");
    tmpl_list = tmpl->add_subcommand("list", "list the templates");
    tmpl_list->add_option("--templates", tmpl_file, "TOML file of custom templates ([NAME] tables)");
  }

  void declare_serve(CLI::App& app) {
    serve = app.add_subcommand("serve", "serve models over an OpenAI-compatible API with a web chat page");
    worker = app.add_subcommand("worker", "serve models as a worker of a controller (vhost serve --controller)");
    for (auto* sub : {serve, worker}) {
      sub->add_option("model_dir", serve_models, "checkpoint folders or GGUF files (served by folder name)")->required();
      sub->add_option("--adapter,--lora-modules", serve_adapters,
                      "NAME=DIR: serve a LoRA adapter folder (PEFT's, or the train stage's out/adapter) as model id "
                      "NAME on the base model_dir; requests for the base and its adapters share batches (repeatable)");
      auto& flags = sub == serve ? serve_flags : worker_flags;
      flags.emplace(sub, "serve",
                    std::vector<StageFlags::Flag>{{"host"}, {"port"}, {"api_keys", "--api-key"}, {"log"},
                                                  {"blocked_words", "--blocked-word"}, {"stream_interval"}, {"stream_flush_ms"},
                                                  {"controller"}, {"advertise"}, {"heartbeat"}, {"max_body"},
                                                  {"request_timeout"}, {"client_connections"}});
      if (sub == worker) flags->option("controller")->required();
      sub->add_option("--max-batch", serve_batch,
                      "sequences decoded together per model (continuous batching; the model plugin's max_batch, "
                      "set where it has one)")->capture_default_str();
      sub->add_option("--max-queue", serve_queue, "requests waiting beyond that before HTTP 429 (the plugin's max_queue)")->capture_default_str();
      declare_runtime(sub);
      sub->add_option("--decode-dtype", serve_decode_dtype,
                      "decoding steps: auto (bfloat16 for a bf16 checkpoint on AVX512-BF16, else float32), float32, "
                      "or bfloat16 (the plugin's decode_dtype, set where it has one)")
          ->check(CLI::IsMember({"auto", "float32", "bfloat16"}))
          ->capture_default_str();
      sub->add_option("--template", serve_template,
                      "conversation template for chat (default: the checkpoint's conversation_template.json, else vicuna_v1.1)");
      sub->add_option("--templates", serve_templates, "TOML file of custom templates ([NAME] tables) --template may name");
      sub->add_option("--moderation", serve_moderation,
                      "moderation: also ask this OpenAI-compatible endpoint's /moderations about every prompt "
                      "(e.g. https://api.openai.com/v1; key from OPENAI_API_KEY)");
      sub->add_option("--moderation-model", serve_moderation_model, "the model --moderation asks")->capture_default_str();
    }
  }

  void declare_evaluation(CLI::App& app) {
    eval = group(app, "eval", "evaluation reports");
    eval_report_cmd = eval->add_subcommand("report", "recompute the report from judgment files (vhost's or FastChat's reviews)");
    report_flags.emplace(eval_report_cmd, "eval-report",
                         std::vector<StageFlags::Flag>{{"reviews"}, {"names"}, {"baseline"}, {"out"}, {"questions"}});
    report_flags->exactly("names", 2);
    agree_cmd = eval->add_subcommand(
        "agreement", "agreement between judges on pairwise votes, per turn, with and without ties (FastChat's compute_agreement.py)");
    agree_flags.emplace(agree_cmd, "agreement", std::vector<StageFlags::Flag>{{"files", "files"}, {"judges"}, {"json"}});
    agree_flags->exactly("judges", 2);
    arena_cmd = group(app, "arena", "the arena leaderboard (FastChat's Chatbot Arena)");
    arena_report_cmd = arena_cmd->add_subcommand(
        "report", "ratings (Bradley-Terry MLE with bootstrap intervals, online Elo) from votes, battles or pairwise judgments");
    arena_flags.emplace(arena_report_cmd, "arena",
                        std::vector<StageFlags::Flag>{{"files", "files"}, {"bootstrap"}, {"seed"}, {"anonymous_only"},
                                                      {"anchors", "--anchor"}, {"out"}, {"json"}});
  }

  void declare_cluster(CLI::App& app) {
    controller = app.add_subcommand("controller", "keep the live workers and dispatch requests to them");
    ctl_flags.emplace(controller, "controller", std::vector<StageFlags::Flag>{{"host"}, {"port"}, {"expiry"}, {"dispatch"}});
    api = app.add_subcommand("api", "OpenAI-compatible API and chat page in front of a controller's workers");
    api_flags.emplace(api, "api",
                      std::vector<StageFlags::Flag>{{"controller"}, {"host"}, {"port"}, {"api_keys", "--api-key"}, {"log"},
                                                    {"max_body"}, {"request_timeout"}, {"client_connections"}});
  }

  void declare_chat(CLI::App& app) {
    chat = app.add_subcommand("chat", "chat with a model in the terminal (multi-turn, streaming)");
    chat->add_option("model_dir", chat_model, "checkpoint folder or GGUF file")->required();
    chat_flags.emplace(chat, "chat",
                       std::vector<StageFlags::Flag>{{"template"}, {"system"}, {"max_tokens"}, {"temperature"}, {"top_p"},
                                                     {"repetition_penalty"}, {"seed"}});
    chat->add_option("--templates", chat_templates, "TOML file of custom templates ([NAME] tables) --template may name");
    chat->add_option("--adapter", chat_adapter, "a LoRA adapter folder merged into the model (the llama option adapter)");
    declare_runtime(chat);

    ver = app.add_subcommand("version", "print versions");
  }

  void declare(CLI::App& app) {
    declare_pipeline(app);
    declare_model(app);
    declare_generate(app);
    declare_perplexity(app);
    declare_serve(app);
    declare_evaluation(app);
    declare_cluster(app);
    declare_chat(app);
  }

  int cmd_version(const vh::Host& /*host*/) {
    std::cout << "vhost " << vh::version() << "\nplugin ABI " << vh::abi_version() << "\n";
    return 0;
  }

  int cmd_plugins(const vh::Host& host) {
    print_plugins(host, as_json, verbose);
    return 0;
  }

  int cmd_stages(const vh::Host& /*host*/) {
    for (const auto& t : vh::Host::stage_types()) {
      std::cout << t["type"].get<std::string>() << ": " << t["help"].get<std::string>() << "\n";
      for (const auto& o : t["options"])
        std::cout << "    " << o["key"].get<std::string>() << " (" << o["type"].get<std::string>() << ")"
                  << (o.contains("default") ? " = " + o["default"].dump() : std::string(" [required]")) << ": "
                  << o["help"].get<std::string>() << "\n";
    }
    return 0;
  }

  int cmd_model_init(const vh::Host& host) {
    // Checked here so that the answer names the flags (the plugin names its tool's fields).
    if (tok_file.empty() && tok_text.empty()) {
      std::cerr << "model init: give --tokenizer-text FILE (trains a tokenizer on it) or --tokenizer tokenizer.model (copies it)\n";
      return kBadInput;
    }
    if (const auto o = std::filesystem::path(out_dir); std::filesystem::exists(o) && !init_overwrite &&
                                                        !(std::filesystem::is_directory(o) && std::filesystem::is_empty(o))) {
      std::cerr << "--out: " << out_dir << " exists; kept (--overwrite replaces it)\n";
      return kBadInput;
    }
    vh::json args = {{"preset", preset}, {"out", std::filesystem::absolute(out_dir).string()}, {"seed", seed}, {"dtype", dtype}};
    if (!tok_file.empty()) args["tokenizer"] = std::filesystem::absolute(tok_file).string();
    if (!tok_text.empty()) args["tokenizer_text"] = std::filesystem::absolute(tok_text).string();
    auto r = host.model_tool(model_plugin, "init", args);
    std::cout << "wrote " << r["out"].get<std::string>() << ": " << r["parameters"] << " parameters, vocabulary "
              << r["vocab_size"] << ", " << r["dtype"].get<std::string>() << "\n";
    return 0;
  }

  int cmd_model_convert(const vh::Host& host) {
    namespace fsys = std::filesystem;
    const fsys::path in = convert_in, out = convert_out;
    std::error_code ec;
    if (!fsys::exists(in)) {
      std::cerr << "in: " << convert_in << " does not exist\n";
      return kBadInput;
    }
    if (fsys::exists(out) && fsys::equivalent(in, out, ec)) {
      std::cerr << "out: " << convert_out << " is the input itself; write somewhere else\n";
      return kBadInput;
    }
    if (!convert_quantize.empty() && !fsys::is_directory(in)) {
      std::cerr << "--quantize: only an HF folder -> GGUF conversion quantizes (" << convert_in << " is not a folder)\n";
      return kBadInput;
    }
    if (fsys::is_directory(in) && out.extension() != ".gguf") {
      std::cerr << "out: " << convert_out << ": an HF folder converts to a GGUF file, whose name ends in .gguf\n";
      return kBadInput;
    }
    if (fsys::exists(out) && !convert_overwrite && !(fsys::is_directory(out) && fsys::is_empty(out))) {
      std::cerr << "out: " << convert_out << " exists; kept (--overwrite replaces it)\n";
      return kBadInput;
    }
    vh::json args = {{"in", std::filesystem::absolute(convert_in).string()},
                     {"out", std::filesystem::absolute(convert_out).string()}};
    if (!convert_quantize.empty()) args["quantize"] = convert_quantize;
    auto r = host.model_tool(model_plugin, "convert", args);
    std::cout << "wrote " << r["out"].get<std::string>() << " (" << r["format"].get<std::string>() << " layout, "
              << r["parameters"] << " parameters)\n";
    return 0;
  }

  int cmd_model_merge(const vh::Host& host) {
    namespace fsys = std::filesystem;
    for (const auto& [what, p] : {std::pair<const char*, std::string>{"base", merge_base}, {"adapter", merge_adapter}})
      if (!fsys::exists(p)) {
        std::cerr << what << ": " << p << " does not exist\n";
        return kBadInput;
      }
    const fsys::path out = merge_out;
    std::error_code ec;
    if (fsys::exists(out) && (fsys::equivalent(merge_base, out, ec) || fsys::equivalent(merge_adapter, out, ec))) {
      std::cerr << "out: " << merge_out << " is an input; write somewhere else\n";
      return kBadInput;
    }
    if (fsys::exists(out) && !merge_overwrite && !(fsys::is_directory(out) && fsys::is_empty(out))) {
      std::cerr << "out: " << merge_out << " exists; kept (--overwrite replaces it)\n";
      return kBadInput;
    }
    vh::json args = {{"base", fsys::absolute(merge_base).string()}, {"adapter", fsys::absolute(merge_adapter).string()},
                     {"out", fsys::absolute(merge_out).string()}};
    auto r = host.model_tool(model_plugin, "merge", args);
    std::cout << "wrote " << r["out"].get<std::string>() << " (HF layout, " << r["dtype"].get<std::string>() << "): "
              << r["adapted_matrices"] << " matrices + rank-" << r["r"] << " updates (scale " << r["scaling"] << ")"
              << (r["modules_to_save"].empty() ? "" : ", " + r["modules_to_save"].dump() + " replaced") << "\n";
    return 0;
  }

  int cmd_tokenizer_codec(const vh::Host& host) {
    std::string in((std::istreambuf_iterator<char>(std::cin)), {});
    vh::json args = {{"tokenizer", std::filesystem::absolute(tok_model).string()}};
    if (*tok_encode && tok_jsonl) {
      vh::json texts = vh::json::array();
      std::istringstream lines(in);
      std::string line;
      for (int n = 1; std::getline(lines, line); ++n) {
        vh::json t;
        try {
          t = vh::json::parse(line);
        } catch (const vh::json::exception& e) {
          throw vh::ConfigError("stdin:" + std::to_string(n) + ": not a JSON string: " + e.what());
        }
        if (!t.is_string()) throw vh::ConfigError("stdin:" + std::to_string(n) + ": expected a JSON string, got " + std::string(t.type_name()));
        texts.push_back(t);
      }
      args["texts"] = texts;
      args["bos"] = tok_bos;
      args["eos"] = tok_eos;
      const vh::json r = host.model_tool(model_plugin, "encode", args);  // (a temporary would die before the loop)
      for (const auto& ids : r["ids"]) std::cout << ids.dump() << "\n";
    } else if (*tok_encode) {
      args["text"] = in;
      args["bos"] = tok_bos;
      args["eos"] = tok_eos;
      std::cout << host.model_tool(model_plugin, "encode", args)["ids"].dump() << "\n";
    } else {
      vh::json ids;
      try {
        ids = vh::json::parse(in);
      } catch (const vh::json::parse_error& e) {
        throw vh::ConfigError("stdin: not a JSON array of token ids: byte " + std::to_string(e.byte) + ": " + e.what());
      }
      if (!ids.is_array()) throw vh::ConfigError("stdin: expected a JSON array of token ids, got " + std::string(ids.type_name()));
      for (std::size_t i = 0; i < ids.size(); ++i)
        if (!ids[i].is_number_integer())
          throw vh::ConfigError("stdin: element " + std::to_string(i) + " is not an integer token id: " + ids[i].dump());
      args["ids"] = ids;
      std::cout << host.model_tool(model_plugin, "decode", args)["text"].get<std::string>();
    }
    return 0;
  }

  int cmd_tokenizer_train(const vh::Host& host) {
    auto r = host.model_tool(model_plugin, "train-tokenizer",
                             {{"input", std::filesystem::absolute(tok_input).string()}, {"vocab", tok_vocab},
                              {"out", std::filesystem::absolute(out_dir).string()}});
    std::cout << "wrote " << r["model"].get<std::string>() << " (" << r["vocab_size"] << " pieces)\n";
    return 0;
  }

  // The runtime part of the one-model shortcuts (generate, perplexity, chat): [backends] from
  // --backend / --threads, [models.m] from MODEL_DIR, --adapter and --model-option.
  void one_model(Shortcut& s, const vh::Host& host, CLI::App* sub, const std::string& dir, const std::string& adapter) {
    s.backend(backend_plugin, option_keys(host, "backend", backend_plugin), threads, given(sub, "--threads"));
    s.model(model_plugin, dir, adapter);
    s.model_options("models.m", model_option_args);
  }

  int cmd_generate(const vh::Host& host) {
    // A one-stage pipeline, so `vhost generate` runs exactly what the generate stage runs.
    Shortcut g("generate", "generate", std::filesystem::temp_directory_path() / "vhost-generate");
    one_model(g, host, gen, gen_model, gen_adapter);
    gen_flags->apply(g, "generate");
    g.run(host);
    return 0;
  }

  int cmd_perplexity(const vh::Host& host) {
    Shortcut g("perplexity", "perplexity", std::filesystem::temp_directory_path() / "vhost-perplexity");
    one_model(g, host, ppl, ppl_model, "");
    ppl_flags->apply(g, "perplexity");
    g.run(host);
    return 0;
  }

  // The report commands run the report stages (eval-report, agreement, arena) as one-stage
  // pipelines; their text is the stage's output.
  int run_quietly(const vh::Host& host, const std::string& stage_type, const StageFlags& flags) const {
    Shortcut r(stage_type, "report", std::filesystem::temp_directory_path() / ("vhost-" + stage_type));
    r.set("stages.report.type", stage_type);
    flags.apply(r, "report");
    vh::set_log_level(log_level == "info" ? "warn" : log_level);  // the report is the output
    r.run(host);
    return 0;
  }

  // `controller` and `api`: the cluster's stages, until SIGINT or SIGTERM.
  int cmd_cluster(const vh::Host& host) {
    const std::string stage = *controller ? "controller" : "api";
    Shortcut c(stage, stage, std::filesystem::temp_directory_path() / ("vhost-" + stage));
    (*controller ? ctl_flags : api_flags)->apply(c, stage);
    c.run(host);
    return 0;
  }

  // serve's engine flags, for a model plugin that has those options (llama's max_batch,
  // max_queue, decode_dtype); a flag given for one that has not is an error naming it.
  void engine_options(Shortcut& sv, const std::string& t, const std::set<std::string>& keys) const {
    const std::tuple<const char*, vh::json, const char*> flags[] = {
        {"max_batch", serve_batch, "--max-batch"}, {"max_queue", serve_queue, "--max-queue"}, {"decode_dtype", serve_decode_dtype, "--decode-dtype"}};
    for (const auto& [key, value, flag] : flags) {
      if (!keys.count(key)) {
        if (given(serve, flag))
          throw vh::ConfigError(std::string(flag) + ": the model plugin '" + model_plugin + "' has no option " + key);
        continue;
      }
      // --decode-dtype only when given: the plugin's own default otherwise (llama's "auto").
      if (std::string(key) != "decode_dtype" || given(serve, flag)) sv.set(t + "." + key, value, flag);
    }
  }

  int cmd_serve(const vh::Host& host) {
    Shortcut sv("serve", "serve", std::filesystem::temp_directory_path() / "vhost-serve");
    const auto& keys = option_keys(host, "model", model_plugin);
    sv.backend(backend_plugin, option_keys(host, "backend", backend_plugin), threads, given(serve, "--threads"));
    std::set<std::string> names;
    if (!serve_adapters.empty() && serve_models.size() != 1)
      throw vh::ConfigError("--adapter: serve one base model with its adapters (or write a pipeline: the llama option "
                            "adapters, per [models.NAME])");
    vh::json adapters = vh::json::object();
    for (const auto& a : serve_adapters) {
      const auto eq = a.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == a.size())
        throw vh::ConfigError("--adapter " + a + ": expected NAME=DIR");
      adapters[a.substr(0, eq)] = absolute(a.substr(eq + 1));
    }
    for (const auto& m : serve_models) {
      std::filesystem::path path = std::filesystem::absolute(m);
      std::string name = path.filename().string();
      if (name.empty()) name = path.parent_path().filename().string();
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') ch = '-';
      if (!names.insert(name).second) throw vh::ConfigError(m + ": two models would both be served as '" + name + "'");
      const std::string t = "models." + name;
      sv.set(t + ".plugin", model_plugin).set(t + ".path", path.string(), "MODEL_DIR " + m);
      engine_options(sv, t, keys);
      sv.model_options(t, model_option_args);
      if (!adapters.empty()) sv.set(t + ".adapters", adapters, "--adapter");
      if (!serve_template.empty()) sv.set(t + ".template", serve_template, "--template");
      sv.templates(t, serve_templates);
    }
    if (!serve_moderation.empty())
      sv.set("judges.moderation.plugin", "openai")
          .set("judges.moderation.base_url", serve_moderation, "--moderation")
          .set("judges.moderation.model", serve_moderation_model, "--moderation-model")
          .set("judges.moderation.moderation_model", serve_moderation_model, "--moderation-model");
    (*serve ? serve_flags : worker_flags)->apply(sv, "serve");
    if (!serve_moderation.empty()) sv.set("stages.serve.moderators", vh::json::array({"judges.moderation"}), "--moderation");
    sv.run(host);
    return 0;
  }

  int cmd_chat(const vh::Host& host) {
    Shortcut ch("chat", "chat", std::filesystem::temp_directory_path() / "vhost-chat");
    one_model(ch, host, chat, chat_model, chat_adapter);
    ch.templates("models.m", chat_templates);
    chat_flags->apply(ch, "chat");
    vh::set_log_level(log_level == "info" ? "warn" : log_level);  // keep the chat clean
    ch.run(host);
    return 0;
  }

  int cmd_template(const vh::Host& /*host*/) {
    vhost::conv::Registry reg;
    try {
      if (!tmpl_file.empty()) reg.add(vh::read_toml_file(tmpl_file));
    } catch (const vhost::conv::TemplateError& e) {
      throw vh::ConfigError(tmpl_file + ": " + e.field() + ": " + e.what());
    }
    if (*tmpl_list) {
      for (const auto& n : reg.names()) {
        const auto& t = reg.get(n);
        std::cout << n << "  roles: " << t.roles[0] << " / " << t.roles[1] << "\n";
      }
      return 0;
    }
    std::string in((std::istreambuf_iterator<char>(std::cin)), {});
    vh::json rec;
    try {
      rec = vh::json::parse(in);
    } catch (const vh::json::parse_error& e) {
      throw vh::ConfigError("stdin: byte " + std::to_string(e.byte) + ": not JSON: " + e.what());
    }
    vhost::conv::Conversation conv;
    const vhost::conv::Template* t = nullptr;
    try {
      conv = vhost::conv::conversation_from_sharegpt(rec);
      t = &reg.get(tmpl_name);
    } catch (const vhost::conv::TemplateError& e) {
      throw vh::ConfigError("stdin: " + (e.field().empty() ? std::string() : e.field() + ": ") + e.what());
    }
    auto r = vhost::conv::render(*t, conv);
    if (tmpl_json) {
      vh::json segs = vh::json::array();
      for (const auto& sg : r.segments) {
        static const char* roles[] = {"system", "tag", "user", "assistant"};
        segs.push_back({{"text", sg.text},
                        {"role", roles[sg.role]},
                        {"trained", sg.trained},
                        {"special", sg.kind == vhost::conv::Segment::Bos   ? "bos"
                                    : sg.kind == vhost::conv::Segment::Eos ? "eos"
                                                                           : ""}});
      }
      std::cout << vh::json{{"template", t->name}, {"text", r.text()}, {"segments", segs},
                            {"stop", t->stop_strings()}}
                       .dump(2)
                << "\n";
      return 0;
    }
    bool open = false;
    for (const auto& sg : r.segments) {
      if (tmpl_mask && sg.trained != open) {
        std::cout << (sg.trained ? "[[" : "]]");
        open = sg.trained;
      }
      std::cout << sg.text;
    }
    if (open) std::cout << "]]";
    std::cout << "\n";
    return 0;
  }

  int cmd_prepare(const vh::Host& host) {
    Shortcut pr("prepare", "prepare", std::filesystem::absolute(prep_out) / ".runs");
    pr.set("models.m.plugin", model_plugin).set("models.m.path", absolute(prep_model), "--model " + prep_model);
    if (option_keys(host, "model", model_plugin).count("load_weights"))
      pr.set("models.m.load_weights", false);  // the tokenizer and template are all it needs
    pr.model_options("models.m", model_option_args);
    pr.set("datasets.d.plugin", "sharegpt")
        .set("datasets.d.path", absolute(prep_input), "INPUT " + prep_input)
        .set("datasets.d.template", prep_template, "--template")
        .set("datasets.d.max_length", prep_max_length, "--max-length")
        .set("datasets.d.eval_fraction", prep_eval, "--eval-fraction")
        .set("datasets.d.html", prep_html, "--html")
        .set("datasets.d.rules", prep_rules, "--rules")
        .set("datasets.d.languages", prep_langs, "--language")
        .set("datasets.d.skip_languages", prep_skip_langs, "--skip-language")
        .set("datasets.d.reduce_rep", prep_reduce_rep, "--reduce-rep")
        .set("datasets.d.blocked_words", prep_blocked, "--blocked-word")
        .set("datasets.d.max_turns", prep_max_turns, "--max-turns")
        .set("datasets.d.dedupe", !prep_no_dedupe, "--no-dedupe");
    pr.templates("datasets.d", prep_templates);
    pr.set("stages.prepare.out", absolute(prep_out), "--out");
    pr.run(host);
    std::cout << "prepared: " << std::filesystem::absolute(prep_out).string() << " (train/, stats.json)\n";
    return 0;
  }

  // `run` and `validate`: a pipeline file.
  int cmd_pipeline(const vh::Host& host) {
  auto pipeline = host.load_file(file, sets);
  if (*validate) {
    if (print_resolved) std::cout << pipeline.resolved().dump(2) << "\n";
    std::cout << file << ": ok (" << pipeline.stages().size() << " stage"
              << (pipeline.stages().size() == 1 ? "" : "s") << ")\n";
    return 0;
  }
  vh::RunOptions ro;
  ro.only = only;
  auto result = host.run(pipeline, ro);
  // The run ends with the report a person opens: the last HTML report a stage wrote (the eval
  // stage's), else run.json.
  std::string html;
  for (const auto& st : result.stages)
    if (st.output.is_object() && st.output.contains("report") && st.output["report"].is_string()) {
      std::string r = st.output["report"].get<std::string>();
      if (r.size() > 5 && r.compare(r.size() - 5, 5, ".html") == 0) html = r;
    }
  std::cout << "pipeline '" << result.pipeline << "' finished: " << result.stages.size() << " stage"
            << (result.stages.size() == 1 ? "" : "s") << "\n";
  if (!html.empty()) std::cout << "run record: " << result.report.string() << "\nreport: " << html << "\n";
  else std::cout << "report: " << result.report.string() << "\n";
  return 0;
  }

  int dispatch(const vh::Host& host) {
    if (*ver) return cmd_version(host);
    if (*plugins) return cmd_plugins(host);
    if (*stages) return cmd_stages(host);
    if (*model_init) return cmd_model_init(host);
    if (*model_convert) return cmd_model_convert(host);
    if (*model_merge) return cmd_model_merge(host);
    if (*tok_encode || *tok_decode) return cmd_tokenizer_codec(host);
    if (*tok_train) return cmd_tokenizer_train(host);
    if (*gen) return cmd_generate(host);
    if (*ppl) return cmd_perplexity(host);
    if (*eval_report_cmd) return run_quietly(host, "eval-report", *report_flags);
    if (*agree_cmd) return run_quietly(host, "agreement", *agree_flags);
    if (*arena_report_cmd) return run_quietly(host, "arena", *arena_flags);
    if (*controller || *api) return cmd_cluster(host);
    if (*serve || *worker) return cmd_serve(host);
    if (*chat) return cmd_chat(host);
    if (*tmpl_render || *tmpl_list) return cmd_template(host);
    if (*prep) return cmd_prepare(host);
    return cmd_pipeline(host);
  }
};

int main(int argc, char** argv) {
  CLI::App app{"vhost: train, serve and evaluate LLaMA chat models (Vicuna's recipe) with plugins"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand
  Cli cli;
  cli.declare(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kBadInput;
  }

  try {
    if (*cli.launch) {
      std::vector<std::string> args = {"run", cli.file, "--log-level", cli.log_level};
      for (const auto& d : cli.plugin_dirs) args.insert(args.end(), {"--plugin-dir", d});
      for (const auto& x : cli.sets) args.insert(args.end(), {"--set", x});
      for (const auto& x : cli.only) args.insert(args.end(), {"--only", x});
      return vhost::cli::launch(cli.lo, std::filesystem::read_symlink("/proc/self/exe").string(), args);
    }
    vh::set_log_level(cli.log_level);
    vh::HostOptions opts;
    for (const auto& d : cli.plugin_dirs) opts.plugin_dirs.emplace_back(d);
    vh::Host host(opts);
    return cli.dispatch(host);
  } catch (const vh::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kBadInput;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kFailed;
  }
}
