// bench/serve: output tokens/s of `vhost serve` on the `tiny` preset with 64 concurrent
// streaming clients, each sending its requests one after the other (a closed loop, as a load
// generator with a concurrency limit does: the batch stays full and per-request costs such as
// connecting and dispatch are paid on every request), measured in one run against baselines:
//  1. the same server limited to batch size 1 (--max-batch 1): what continuous batching buys;
//  2. the in-process engine with the same requests and no HTTP: what the HTTP path costs.
// Also p50/p99 time to first token over HTTP.
//
//   bench_serve [--clients 64] [--requests 4] [--tokens 256] [--threads 2] [--rounds 5]
//               [--decode-dtype auto|float32|bfloat16]
// --requests 1: a single burst of one request per client (ramp-up and tail weigh more).
//
//   bench_serve --soak SECONDS [--clients 200] [--threads 2]
// A soak instead: that many clients for that long against one `vhost serve` (half of them
// streaming, each sending its next request when the last is answered, 16-128 tokens), counting
// every request that does not end in a 200 and a whole answer (a stream's [DONE], a reply's
// choices) as an error, and the server's resident memory at the start, its peak and the end.
#include "engine.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

static const char* kPrompt = "A chat between a curious user and an artificial intelligence assistant. USER: Tell me a story. ASSISTANT:";

struct Load {
  double tokens_per_s = 0, ttft_p50 = 0, ttft_p99 = 0;
  int64_t tokens = 0, failed = 0;
};

static Load http_load(int port, int clients, int tokens, int requests) {
  std::vector<double> ttft(static_cast<std::size_t>(clients * requests), -1);
  std::vector<int64_t> got(ttft.size(), -1);  // -1: failed (0 is a request whose first token was EOS)
  std::vector<std::thread> threads;
  auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      for (int i = c * requests; i < (c + 1) * requests; ++i) {
        httplib::Client cli("127.0.0.1", port);
        cli.set_read_timeout(600, 0);
        json body = {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", tokens}, {"temperature", 1.0},
                     {"seed", i}, {"stream", true}, {"stream_options", {{"include_usage", true}}}};
        httplib::Request req;
        req.method = "POST";
        req.path = "/v1/completions";
        req.body = body.dump();
        req.set_header("Content-Type", "application/json");
        auto start = Clock::now();
        std::string buf;
        req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
          if (ttft[i] < 0) ttft[i] = std::chrono::duration<double>(Clock::now() - start).count();
          buf.append(d, n);
          return true;
        };
        httplib::Response res;
        httplib::Error err;
        if (!cli.send(req, res, err) || res.status != 200) {
          if (i == 0) std::fprintf(stderr, "client 0: HTTP %d, %s: %s\n", res.status, httplib::to_string(err).c_str(), buf.substr(0, 300).c_str());
          continue;
        }
        // The usage chunk counts the completion tokens.
        auto at = buf.find("\"usage\"");
        if (at == std::string::npos) continue;
        auto line_start = buf.rfind("data: ", at) + 6;
        got[i] = json::parse(buf.substr(line_start, buf.find("\n\n", at) - line_start))["usage"]["completion_tokens"];
      }
    });
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  Load l;
  for (auto g : got) {
    l.tokens += std::max<int64_t>(g, 0);
    l.failed += g < 0;
  }
  l.tokens_per_s = static_cast<double>(l.tokens) / secs;
  std::sort(ttft.begin(), ttft.end());
  const int n = static_cast<int>(ttft.size());
  l.ttft_p50 = ttft[n / 2];
  l.ttft_p99 = ttft[std::min(n - 1, static_cast<int>(n * 0.99))];
  return l;
}

// Starts `vhost ARGS...` with its output in `log` and returns (pid, port) once it prints its
// listening address.
static std::pair<pid_t, int> start(const fs::path& vhost, std::vector<std::string> args, const fs::path& log) {
  fs::remove(log);  // never read a previous run's port
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    std::vector<char*> argv{const_cast<char*>(vhost.c_str())};
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(vhost.c_str(), argv.data());
    _exit(127);
  }
  for (int i = 0; i < 400; ++i) {
    std::ifstream in(log);
    std::string s((std::istreambuf_iterator<char>(in)), {});
    // The last address on the first line that has one ("worker of CONTROLLER at SELF").
    auto p = s.find("127.0.0.1:");
    if (p != std::string::npos && s.find('\n', p) != std::string::npos) {
      p = s.rfind("127.0.0.1:", s.find('\n', p));
      return {pid, std::atoi(s.c_str() + p + 10)};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::fprintf(stderr, "vhost %s did not start (see %s)\n", args[0].c_str(), log.c_str());
  std::exit(1);
}

static std::string decode_dtype = "auto";

static std::pair<pid_t, int> start_server(const fs::path& vhost, const fs::path& model, int batch, int threads,
                                          const fs::path& log) {
  return start(vhost, {"serve", model.string(), "--port", "0", "--max-batch", std::to_string(batch), "--max-queue", "1024",
                       "--threads", std::to_string(threads), "--decode-dtype", decode_dtype, "--log-level", "warn"},
               log);
}

// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
static double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), {});
  auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i)
    if (i == 14 || i == 15) ticks += std::stod(f);  // utime, stime
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

static void print_load(const std::string& what, const Load& l) {
  std::printf("%-26s %9.0f tokens/s  (%lld tokens, %lld failed)  TTFT p50 %.3f s, p99 %.3f s\n", what.c_str(), l.tokens_per_s,
              static_cast<long long>(l.tokens), static_cast<long long>(l.failed), l.ttft_p50, l.ttft_p99);
}

static void stop(pid_t pid) {
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
}

// The server's resident memory in MiB, from /proc/PID/status.
static double rss_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

static int soak(const fs::path& vhost, const fs::path& model, int clients, int seconds, int threads, const fs::path& scratch) {
  auto [pid, port] = start_server(vhost, model, 64, threads, scratch / "soak.log");
  http_load(port, 2, 4, 1);  // warm-up
  const double rss_start = rss_mib(pid);
  double rss_peak = rss_start;
  std::atomic<bool> done{false};
  std::atomic<int64_t> requests{0}, errors{0}, streamed{0};
  std::mutex mu;
  std::string first_error;
  auto fail = [&](const std::string& what) {
    ++errors;
    std::lock_guard<std::mutex> g(mu);
    if (first_error.empty()) first_error = what;
  };
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c));
      const bool stream = c % 2 == 0;
      for (int i = 0; !done; ++i) {
        httplib::Client cli("127.0.0.1", port);
        cli.set_read_timeout(300, 0);
        const int max_tokens = 16 + static_cast<int>(rng() % 113);
        json body = {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", max_tokens}, {"temperature", 1.0},
                     {"seed", c * 100000 + i}, {"stream", stream}};
        auto r = cli.Post("/v1/completions", body.dump(), "application/json");
        ++requests;
        if (!r) {
          fail("no answer: " + httplib::to_string(r.error()));
          continue;
        }
        if (r->status != 200) {
          fail("HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 200));
          continue;
        }
        if (stream) {
          ++streamed;
          if (r->body.size() < 14 || r->body.compare(r->body.size() - 14, 14, "data: [DONE]\n\n") != 0)
            fail("a stream without its [DONE]: ..." + r->body.substr(r->body.size() > 200 ? r->body.size() - 200 : 0));
        } else {
          try {
            (void)json::parse(r->body).at("choices").at(0).at("text").get<std::string>();
          } catch (const std::exception& e) {
            fail(std::string("a reply without its text: ") + e.what());
          }
        }
      }
    });
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    rss_peak = std::max(rss_peak, rss_mib(pid));
  }
  done = true;
  for (auto& t : ts) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double rss_end = rss_mib(pid);
  stop(pid);
  std::printf("soak: %d clients (%d streaming) for %.0f s: %lld requests (%lld streamed), %lld errors; server RSS start "
              "%.0f MiB, peak %.0f MiB, end %.0f MiB (end/start %.2f)\n",
              clients, (clients + 1) / 2, wall, static_cast<long long>(requests.load()), static_cast<long long>(streamed.load()),
              static_cast<long long>(errors.load()), rss_start, rss_peak, rss_end, rss_end / std::max(rss_start, 1.0));
  if (!first_error.empty()) std::printf("the first error: %s\n", first_error.c_str());
  return errors == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  int clients = 64, requests = 4, tokens = 256, threads = 2, rounds = 5, soak_seconds = 0;
  bool clients_given = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--clients") clients = std::atoi(argv[i + 1]), clients_given = true;
    else if (a == "--soak") soak_seconds = std::atoi(argv[i + 1]);
    else if (a == "--tokens") tokens = std::atoi(argv[i + 1]);
    else if (a == "--requests") requests = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--decode-dtype") decode_dtype = argv[i + 1];
  }
  fs::path self = fs::read_symlink("/proc/self/exe").parent_path(), vhost = self / "vhost";
  fs::path scratch = fs::temp_directory_path() / "vhost-bench-serve", model = scratch / "tiny";
  fs::create_directories(scratch);
  std::string init = vhost.string() + " model init --preset tiny --tokenizer-text " + VHOST_SOURCE_DIR +
                     "/docs/plugins.md --overwrite --out " + model.string() + " >/dev/null";
  if (std::system(init.c_str()) != 0) return 1;
  if (soak_seconds > 0) return soak(vhost, model, clients_given ? clients : 200, soak_seconds, threads, scratch);
  std::printf("tiny preset, %d concurrent streaming clients, %d requests each one after the other, at most %d tokens a "
              "request (temperature 1, seeded), %d threads, decode_dtype %s\n",
              clients, requests, tokens, threads, decode_dtype.c_str());

  // Batch size 1 is slow (about 10 s): one run. The fast runs take under a second each on a
  // shared machine, so they go in rounds: direct HTTP, the API path and the in-process engine
  // one after the other, each round the same requests, and the medians are compared.
  Load one;
  {
    auto [pid, port] = start_server(vhost, model, 1, threads, scratch / "serve-1.log");
    http_load(port, 2, 4, 1);  // warm-up
    one = http_load(port, clients, tokens, requests);
    stop(pid);
    print_load("HTTP, --max-batch 1", one);
  }

  auto [spid, sport] = start_server(vhost, model, clients, threads, scratch / ("serve-" + std::to_string(clients) + ".log"));
  // The distributed path: API server -> controller -> worker, each its own process.
  auto [cpid, cport] = start(vhost, {"controller", "--port", "0"}, scratch / "controller.log");
  std::string ctl = "http://127.0.0.1:" + std::to_string(cport);
  auto [wpid, wport] = start(vhost, {"worker", model.string(), "--controller", ctl, "--port", "0", "--max-batch",
                                      std::to_string(clients), "--max-queue", "1024", "--threads", std::to_string(threads),
                                      "--decode-dtype", decode_dtype, "--heartbeat", "0.5", "--log-level", "warn"},
                             scratch / "worker.log");
  auto [apid, aport] = start(vhost, {"api", "--controller", ctl, "--port", "0"}, scratch / "api.log");
  for (int i = 0; i < 200; ++i) {  // until the worker has registered
    httplib::Client c("127.0.0.1", aport);
    auto r = c.Get("/v1/models");
    if (r && r->body.find("\"tiny\"") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  http_load(sport, 2, 4, 1);  // warm-up
  http_load(aport, 2, 4, 1);

  // In process: the same requests straight into the engine.
  torch::set_num_threads(threads);
  auto m = vhost::llama::LlamaModel::load(model);
  if (decode_dtype == "bfloat16" && !m.enable_bf16_decode()) std::printf("(no bfloat16 kernel for this CPU: the engine decodes in float32)\n");
  auto tok = vhost::llama::Tokenizer::load(model / "tokenizer.model");
  vhost::llama::Engine engine(m, &tok, clients, 0, 1024);
  auto prompt = tok.encode(kPrompt, true);
  auto in_process = [&] {
    std::vector<int64_t> got(static_cast<std::size_t>(clients * requests), 0);
    std::vector<std::thread> ts;
    auto t0 = Clock::now();
    for (int c = 0; c < clients; ++c)
      ts.emplace_back([&, c] {
        for (int i = c * requests; i < (c + 1) * requests; ++i) {
          vhost::llama::SamplingParams p;
          p.temperature = 1.0;
          p.max_tokens = tokens;
          p.seed = static_cast<uint64_t>(i);
          got[i] = static_cast<int64_t>(
              engine.generate(prompt, p, [](std::size_t, int32_t, const std::string&) { return true; }).tokens.size());
        }
      });
    for (auto& t : ts) t.join();
    Load l;
    for (auto g : got) l.tokens += g;
    l.tokens_per_s = static_cast<double>(l.tokens) / std::chrono::duration<double>(Clock::now() - t0).count();
    return l;
  };

  std::vector<Load> direct, routed, inproc;
  // Where the CPU goes on the API path: each process's CPU seconds over the routed rounds.
  double api_cpu = 0, worker_cpu = 0, controller_cpu = 0, routed_tokens = 0, routed_wall = 0;
  double inproc_cpu = 0, inproc_tokens = 0;
  for (int round = 0; round < rounds; ++round) {
    direct.push_back(http_load(sport, clients, tokens, requests));
    double a0 = cpu_seconds(apid), w0 = cpu_seconds(wpid), c0 = cpu_seconds(cpid);
    routed.push_back(http_load(aport, clients, tokens, requests));
    api_cpu += cpu_seconds(apid) - a0;
    worker_cpu += cpu_seconds(wpid) - w0;
    controller_cpu += cpu_seconds(cpid) - c0;
    routed_tokens += static_cast<double>(routed.back().tokens);
    routed_wall += static_cast<double>(routed.back().tokens) / routed.back().tokens_per_s;
    const double e0 = cpu_seconds(getpid());
    inproc.push_back(in_process());
    inproc_cpu += cpu_seconds(getpid()) - e0;  // this process runs nothing else meanwhile
    inproc_tokens += static_cast<double>(inproc.back().tokens);
  }
  // Rows per decode step over the worker's life (warm-up included) and the in-process engine's.
  double worker_batch = 0;
  if (auto r = httplib::Client("127.0.0.1", wport).Get("/metrics")) {
    auto at = r->body.find("\nvhost_model_mean_batch{");
    if (at != std::string::npos) worker_batch = std::atof(r->body.c_str() + r->body.find("} ", at) + 2);
  }
  stop(apid);
  stop(wpid);
  stop(cpid);
  stop(spid);
  auto median = [](std::vector<Load> v) {
    std::sort(v.begin(), v.end(), [](const Load& a, const Load& b) { return a.tokens_per_s < b.tokens_per_s; });
    return v[v.size() / 2];
  };
  Load many = median(direct), via_api = median(routed), engine_only = median(inproc);
  print_load("HTTP, --max-batch " + std::to_string(clients), many);
  std::printf("continuous batching: %.2fx batch size 1\n", many.tokens_per_s / one.tokens_per_s);
  // What any batching server could reach here if its HTTP path cost nothing: the in-process
  // engine at the same batch against the HTTP server at batch 1.
  std::printf("ceiling on these cores: the in-process engine is %.2fx the HTTP server at batch size 1\n",
              engine_only.tokens_per_s / one.tokens_per_s);
  print_load("HTTP via api + controller", via_api);
  std::printf("%-26s %9.0f tokens/s  (%lld tokens)\n", "in-process engine", engine_only.tokens_per_s,
              static_cast<long long>(engine_only.tokens));
  std::printf("(medians of %d rounds; per round, api path / in-process:", rounds);
  for (int r = 0; r < rounds; ++r) std::printf(" %.2f", routed[r].tokens_per_s / inproc[r].tokens_per_s);
  std::printf(")\n");
  std::printf("API path CPU per 1000 tokens: worker %.3f s, api %.3f s, controller %.3f s (wall %.3f s, %d cores)\n",
              1000 * worker_cpu / routed_tokens, 1000 * api_cpu / routed_tokens, 1000 * controller_cpu / routed_tokens,
              1000 * routed_wall / routed_tokens, threads);
  // The load generator shares the cores with the servers here; the servers' own CPU per token
  // against the engine's is what the HTTP path costs where clients run elsewhere.
  const double served = (worker_cpu + api_cpu + controller_cpu) / routed_tokens, engine_cpu = inproc_cpu / inproc_tokens;
  std::printf("in-process engine CPU per 1000 tokens: %.3f s; servers' CPU (worker + api + controller) per token: %.2fx "
              "the engine's\n",
              1000 * engine_cpu, served / engine_cpu);
  std::printf("mean rows per decode step: worker %.1f, in-process engine %.1f\n", worker_batch, engine.stats().mean_batch);
  std::printf("HTTP path: %.2fx the in-process engine; via api + controller: %.2fx\n", many.tokens_per_s / engine_only.tokens_per_s,
              via_api.tokens_per_s / engine_only.tokens_per_s);
  return 0;
}
