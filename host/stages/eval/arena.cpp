#include "stages/eval/arena.hpp"

#include "stages/eval/eval.hpp"
#include "stages/common/html_text.hpp"

#include <vhost/host/error.hpp>

#include <algorithm>
#include <array>
#include <tuple>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

namespace vhost::host::arena {

std::vector<JudgedPair> judged_pairs(const std::vector<json>& judgments, bool two_scores, int64_t& errors, int64_t& single) {
  std::vector<JudgedPair> out;
  std::map<std::tuple<int64_t, int64_t, std::string, std::string>, std::size_t> at;
  for (const auto& j : judgments) {
    const std::string mode = j.value("mode", "");
    if (mode == "single") {
      ++single;
      continue;
    }
    if (mode == "vicuna" && !two_scores) continue;
    const std::string a = j.value("model_a", ""), b = j.value("model_b", "");
    const int64_t qid = j.value("question_id", int64_t{0}), turn = j.value("turn", int64_t{1});
    auto [it, fresh] = at.try_emplace(std::make_tuple(qid, turn, a, b), out.size());
    if (fresh) out.push_back({qid, turn, a, b, {}});
    auto& v = out[it->second].verdicts;
    if (j.contains("error") || (mode == "vicuna" && (!j.contains("score_a") || !j.contains("score_b")))) {
      ++errors;
      continue;
    }
    if (mode == "vicuna") {
      const double sa = j["score_a"].get<double>(), sb = j["score_b"].get<double>();
      v.push_back(sa > sb ? "model_a" : sb > sa ? "model_b" : "tie");
    } else {
      const std::string w = j.value("winner", "");
      v.push_back(w == a ? "model_a" : w == b ? "model_b" : "tie");
    }
  }
  return out;
}

std::string combined_verdict(const std::vector<std::string>& verdicts) {
  if (verdicts.empty()) return "";
  for (const auto& x : verdicts)
    if (x != verdicts[0]) return "tie";
  return verdicts[0];
}

namespace {

const std::set<std::string>& winners() {
  static const std::set<std::string> w = {"model_a", "model_b", "tie", "tie (bothbad)"};
  return w;
}

std::string fmt(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// One vote of the chat page: {"models": [a, b], "vote": "A" | "B" | "tie" | "bad", "anonymous"}.
Battle from_vote(const json& v, const std::string& at) {
  if (!v.is_object() || !v.contains("models") || !v["models"].is_array() || v["models"].size() != 2 ||
      !v["models"][0].is_string() || !v["models"][1].is_string())
    throw ConfigError(at + ": vote.models: expected the two models' names");
  if (!v.contains("vote") || !v["vote"].is_string()) throw ConfigError(at + ": vote.vote: expected A, B, tie or bad");
  static const std::map<std::string, std::string> to = {{"A", "model_a"}, {"B", "model_b"}, {"tie", "tie"}, {"bad", "tie (bothbad)"}};
  auto it = to.find(v["vote"].get<std::string>());
  if (it == to.end()) throw ConfigError(at + ": vote.vote: '" + v["vote"].get<std::string>() + "' is not A, B, tie or bad");
  Battle b{v["models"][0].get<std::string>(), v["models"][1].get<std::string>(), it->second, false};
  if (v.contains("anonymous")) {
    if (!v["anonymous"].is_boolean()) throw ConfigError(at + ": vote.anonymous: expected true or false");
    b.anonymous = v["anonymous"].get<bool>();
  }
  return b;
}

// FastChat's battle record: {"model_a", "model_b", "winner", "anony"}.
Battle from_fastchat(const json& r, const std::string& at) {
  for (const char* k : {"model_a", "model_b", "winner"})
    if (!r.contains(k) || !r[k].is_string()) throw ConfigError(at + ": " + k + ": expected a string");
  const std::string w = r["winner"].get<std::string>();
  if (!winners().count(w))
    throw ConfigError(at + ": winner: '" + w + "' is not model_a, model_b, tie or tie (bothbad)");
  Battle b{r["model_a"].get<std::string>(), r["model_b"].get<std::string>(), w, false};
  if (r.contains("anony")) {
    if (!r["anony"].is_boolean()) throw ConfigError(at + ": anony: expected true or false");
    b.anonymous = r["anony"].get<bool>();
  }
  return b;
}

// Pairwise (or Vicuna-style two-score) judgments: one battle per question, turn and pair.
std::vector<Battle> from_judgments(const std::vector<json>& judgments, const fs::path& file, std::vector<std::string>& notes) {
  int64_t errors = 0, single = 0;
  const auto pairs = judged_pairs(judgments, /*two_scores=*/true, errors, single);
  if (single && pairs.empty())
    throw ConfigError(file.string() + ": single-answer judgments compare no two models: there are no battles in it");
  std::vector<Battle> out;
  int64_t inconsistent = 0, unjudged = 0;
  for (const auto& p : pairs) {
    const std::string w = combined_verdict(p.verdicts);
    if (w.empty()) {
      ++unjudged;
      continue;
    }
    if (w == "tie" && std::find(p.verdicts.begin(), p.verdicts.end(), "tie") == p.verdicts.end()) ++inconsistent;
    out.push_back({p.model_a, p.model_b, w, false});
  }
  notes.push_back(file.string() + ": " + std::to_string(out.size()) + " battles from judgments (" +
                  std::to_string(inconsistent) + " with the two orders disagreeing, counted as ties; " +
                  std::to_string(unjudged) + " without a verdict skipped; " + std::to_string(errors) + " failed judgments)");
  return out;
}

}  // namespace

std::optional<json> read_json_list(const fs::path& file, const std::string& what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(file.string() + ": cannot open");
  char c = 0;
  bool any = false;
  while (in.get(c))
    if (!std::isspace(static_cast<unsigned char>(c))) {
      any = true;
      break;
    }
  if (!any) throw ConfigError(file.string() + ": empty: no " + what);
  if (c != '[') return std::nullopt;
  in.clear();
  in.seekg(0);
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw ConfigError(file.string() + ": byte " + std::to_string(e.byte) + ": not valid JSON: " + e.what());
  }
}

std::vector<Battle> read_battles(const fs::path& file, std::vector<std::string>& notes) {
  std::vector<Battle> out;
  if (auto all = read_json_list(file, "battles")) {  // FastChat's clean_battle_data.py output
    for (std::size_t i = 0; i < all->size(); ++i) {
      if (!(*all)[i].is_object()) throw ConfigError(file.string() + ": [" + std::to_string(i) + "]: expected a battle object");
      out.push_back(from_fastchat((*all)[i], file.string() + ": [" + std::to_string(i) + "]"));
    }
    return out;
  }
  std::ifstream in(file, std::ios::binary);
  std::string line;
  int64_t n = 0, skipped = 0;
  bool judgments = false;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = file.string() + ":" + std::to_string(n);
    json r;
    try {
      r = json::parse(line);
    } catch (const json::parse_error& e) {
      throw ConfigError(at + ": not valid JSON: " + e.what());
    }
    if (!r.is_object()) throw ConfigError(at + ": expected a JSON object");
    if (r.contains("vote")) {
      out.push_back(from_vote(r["vote"], at));
    } else if (r.contains("endpoint")) {  // a conversation of the same log
      ++skipped;
    } else if (r.contains("winner") && r.contains("model_a") && !r.contains("mode")) {
      out.push_back(from_fastchat(r, at));
    } else {
      judgments = true;
      break;
    }
  }
  if (judgments) {
    if (!out.empty()) throw ConfigError(file.string() + ":" + std::to_string(n) + ": judgments after battles: give them in their own file");
    std::vector<std::string> warnings;
    return from_judgments(read_judgments(file, {}, warnings), file, notes);
  }
  if (skipped) notes.push_back(file.string() + ": " + std::to_string(out.size()) + " votes, " + std::to_string(skipped) + " conversations skipped");
  return out;
}

std::map<std::string, double> online_elo(const std::vector<Battle>& battles, double k, double scale, double base, double init) {
  std::map<std::string, double> r;
  for (const auto& b : battles) {
    double& ra = r.try_emplace(b.model_a, init).first->second;
    double& rb = r.try_emplace(b.model_b, init).first->second;
    const double ea = 1 / (1 + std::pow(base, (rb - ra) / scale)), eb = 1 / (1 + std::pow(base, (ra - rb) / scale));
    const double sa = b.winner == "model_a" ? 1 : b.winner == "model_b" ? 0 : 0.5;
    ra += k * (sa - ea);
    rb += k * (1 - sa - eb);
  }
  return r;
}

std::map<std::string, double> mle_elo(const std::vector<Battle>& battles, double scale, double base, double init) {
  std::map<std::string, std::size_t> index;
  for (const auto& b : battles) {
    index.try_emplace(b.model_a, index.size());
    index.try_emplace(b.model_b, index.size());
  }
  const std::size_t p = index.size();
  const double lb = std::log(base);
  struct Row {
    std::size_t a, b;
    double y_sum;  // targets of its two copies: A win 2, tie 1, B win 0
  };
  std::vector<Row> rows;
  rows.reserve(battles.size());
  for (const auto& b : battles)
    rows.push_back({index[b.model_a], index[b.model_b], b.winner == "model_a" ? 2.0 : b.winner == "model_b" ? 0.0 : 1.0});
  // Minimise sum over copies of log(1 + e^z) - y z, z = ln(base) (w_a - w_b), plus |w|^2 / 2.
  std::vector<double> w(p, 0.0);
  for (int iter = 0; iter < 100; ++iter) {
    std::vector<double> g(w);                           // the penalty's gradient
    std::vector<double> h(p * p, 0.0);
    for (std::size_t i = 0; i < p; ++i) h[i * p + i] = 1;  // and Hessian
    for (const auto& r : rows) {
      if (r.a == r.b) continue;  // x = 0 (a model against itself): no information
      const double z = lb * (w[r.a] - w[r.b]);
      const double s = 1 / (1 + std::exp(-z));
      const double gz = (2 * s - r.y_sum) * lb, hz = 2 * s * (1 - s) * lb * lb;
      g[r.a] += gz, g[r.b] -= gz;
      h[r.a * p + r.a] += hz, h[r.b * p + r.b] += hz, h[r.a * p + r.b] -= hz, h[r.b * p + r.a] -= hz;
    }
    // Solve h d = g (symmetric positive definite: Cholesky).
    std::vector<double> L(p * p, 0.0);
    for (std::size_t i = 0; i < p; ++i)
      for (std::size_t j = 0; j <= i; ++j) {
        double sum = h[i * p + j];
        for (std::size_t k2 = 0; k2 < j; ++k2) sum -= L[i * p + k2] * L[j * p + k2];
        L[i * p + j] = i == j ? std::sqrt(sum) : sum / L[j * p + j];
      }
    std::vector<double> y(p), d(p);
    for (std::size_t i = 0; i < p; ++i) {
      double sum = g[i];
      for (std::size_t k2 = 0; k2 < i; ++k2) sum -= L[i * p + k2] * y[k2];
      y[i] = sum / L[i * p + i];
    }
    for (std::size_t i = p; i-- > 0;) {
      double sum = y[i];
      for (std::size_t k2 = i + 1; k2 < p; ++k2) sum -= L[k2 * p + i] * d[k2];
      d[i] = sum / L[i * p + i];
    }
    double step = 0;
    for (std::size_t i = 0; i < p; ++i) w[i] -= d[i], step = std::max(step, std::abs(d[i]));
    if (step < 1e-13) break;
  }
  std::map<std::string, double> out;
  for (const auto& [m, i] : index) out[m] = scale * w[i] + init;
  return out;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

namespace {

// pandas' default quantile: linear interpolation between the closest ranks.
double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

void apply_anchors(std::map<std::string, double>& r, const std::map<std::string, double>& anchors) {
  for (const auto& [m, target] : anchors)
    if (r.count(m)) {
      const double shift = target - r[m];
      for (auto& [_, v] : r) v += shift;
      return;  // one anchor: the first model present
    }
}

}  // namespace

json report(const std::vector<Battle>& all, const Options& o) {
  std::vector<Battle> battles;
  int64_t anonymous = 0, self = 0;
  for (const auto& b : all) {
    if (b.anonymous) ++anonymous;
    if (o.anonymous_only && !b.anonymous) continue;
    if (b.model_a == b.model_b) {
      ++self;  // FastChat's cleaning drops these too
      continue;
    }
    battles.push_back(b);
  }
  if (battles.empty()) throw ConfigError("no battles to rate" + std::string(o.anonymous_only ? " (only anonymous ones were asked for)" : ""));
  auto mle = mle_elo(battles);
  auto online = online_elo(battles);
  apply_anchors(mle, o.anchors);  // as FastChat: the MLE ratings only, not the online Elo

  std::map<std::string, std::vector<double>> boot;
  if (o.rounds > 0) {
    uint64_t state = o.seed;
    std::vector<Battle> sample(battles.size());
    for (int64_t r = 0; r < o.rounds; ++r) {
      for (auto& s : sample) s = battles[splitmix64(state) % battles.size()];
      auto e = mle_elo(sample);
      apply_anchors(e, o.anchors);
      for (const auto& [m, _] : mle) boot[m].push_back(e.count(m) ? e[m] : std::nan(""));
    }
  }
  std::map<std::string, std::array<int64_t, 4>> wtl;  // battles, wins, ties, losses
  std::map<std::pair<std::string, std::string>, double> wins, count;  // (row, col): row beat col; battles
  for (const auto& b : battles) {
    auto& A = wtl[b.model_a];
    auto& B = wtl[b.model_b];
    ++A[0], ++B[0];
    if (b.winner == "model_a") ++A[1], ++B[3], wins[{b.model_a, b.model_b}] += 1;
    else if (b.winner == "model_b") ++B[1], ++A[3], wins[{b.model_b, b.model_a}] += 1;
    else ++A[2], ++B[2];
    count[{b.model_a, b.model_b}] += 1;
    count[{b.model_b, b.model_a}] += 1;
  }
  std::vector<std::string> models;
  for (const auto& [m, _] : mle) models.push_back(m);
  std::stable_sort(models.begin(), models.end(), [&](const std::string& a, const std::string& b) { return mle[a] > mle[b]; });
  json rows = json::array();
  for (const auto& m : models) {
    json r = {{"model", m}, {"rating", mle[m]}, {"online_elo", online[m]}, {"battles", wtl[m][0]},
              {"wins", wtl[m][1]}, {"ties", wtl[m][2]}, {"losses", wtl[m][3]}};
    std::vector<double> v;
    for (double x : boot[m])
      if (!std::isnan(x)) v.push_back(x);
    if (!v.empty()) {
      r["median"] = quantile(v, 0.5);
      r["ci_low"] = quantile(v, 0.025);
      r["ci_high"] = quantile(v, 0.975);
    } else {
      r["median"] = r["ci_low"] = r["ci_high"] = nullptr;
    }
    rows.push_back(r);
  }
  json frac = json::array(), counts = json::array();
  for (const auto& a : models) {
    json fr = json::array(), cr = json::array();
    for (const auto& b : models) {
      const double n = count.count({a, b}) ? count[{a, b}] : 0;
      fr.push_back(a != b && n > 0 ? json((wins.count({a, b}) ? wins[{a, b}] : 0.0) / n) : json(nullptr));
      cr.push_back(a == b ? json(nullptr) : json(static_cast<int64_t>(n)));
    }
    frac.push_back(fr);
    counts.push_back(cr);
  }
  json anchors = json::object();
  for (const auto& [m, v] : o.anchors) anchors[m] = v;
  return {{"battles", battles.size()},
          {"anonymous_battles", anonymous},
          {"self_battles_dropped", self},
          {"models", rows},
          {"win_fraction", {{"models", models}, {"matrix", frac}}},
          {"battle_counts", {{"models", models}, {"matrix", counts}}},
          {"bootstrap", {{"rounds", o.rounds}, {"seed", o.seed}, {"resampling", "splitmix64 from the seed; draw mod battles"}}},
          {"anchors", anchors}};
}

std::string markdown(const json& r) {
  std::ostringstream s;
  s << "## Arena leaderboard\n\n" << r["battles"].get<int64_t>() << " battles (" << r["anonymous_battles"].get<int64_t>()
    << " anonymous); ratings: Bradley–Terry maximum likelihood (FastChat's leaderboard), 95% interval from "
    << r["bootstrap"]["rounds"].get<int64_t>() << " bootstrap rounds (seed " << r["bootstrap"]["seed"].get<uint64_t>()
    << "); online Elo for comparison (K = 4).\n\n"
    << "| rank | model | rating | 95% CI | online Elo | battles | wins | ties | losses |\n"
    << "| ---: | --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: |\n";
  int rank = 0;
  for (const auto& m : r["models"]) {
    s << "| " << ++rank << " | " << m["model"].get<std::string>() << " | " << fmt(m["rating"].get<double>(), 1) << " | "
      << (m["ci_low"].is_null() ? std::string("-")
                                : "+" + fmt(m["ci_high"].get<double>() - m["rating"].get<double>(), 1) + " / -" +
                                      fmt(m["rating"].get<double>() - m["ci_low"].get<double>(), 1))
      << " | " << fmt(m["online_elo"].get<double>(), 1) << " | " << m["battles"] << " | " << m["wins"] << " | " << m["ties"]
      << " | " << m["losses"] << " |\n";
  }
  auto matrix = [&](const char* title, const json& t, bool fraction) {
    s << "\n### " << title << "\n\n| |";
    for (const auto& m : t["models"]) s << " " << m.get<std::string>() << " |";
    s << "\n| --- |";
    for (std::size_t i = 0; i < t["models"].size(); ++i) s << " ---: |";
    s << "\n";
    for (std::size_t i = 0; i < t["models"].size(); ++i) {
      s << "| " << t["models"][i].get<std::string>() << " |";
      for (const auto& v : t["matrix"][i])
        s << " " << (v.is_null() ? std::string("-") : fraction ? fmt(v.get<double>(), 2) : std::to_string(v.get<int64_t>())) << " |";
      s << "\n";
    }
  };
  matrix("Fraction of battles the row's model won against the column's (ties count as not won)", r["win_fraction"], true);
  matrix("Battles per pair", r["battle_counts"], false);
  return s.str();
}

std::string html(const json& r) {
  const auto esc = html_escape;
  const auto& models = r["models"];
  double lo = 1e300, hi = -1e300;
  for (const auto& m : models) {
    lo = std::min(lo, m["ci_low"].is_null() ? m["rating"].get<double>() : m["ci_low"].get<double>());
    hi = std::max(hi, m["ci_high"].is_null() ? m["rating"].get<double>() : m["ci_high"].get<double>());
  }
  const double pad = std::max(10.0, (hi - lo) * 0.1);
  lo -= pad, hi += pad;
  const int W = 640, rowh = 26, left = 170, right = 60;
  const int H = static_cast<int>(models.size()) * rowh + 40;
  auto x = [&](double v) { return left + (v - lo) / (hi - lo) * (W - left - right); };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>";
  int i = 0;
  for (const auto& m : models) {
    const double y = 20 + i++ * rowh, v = m["rating"].get<double>();
    svg << "<text x='" << left - 8 << "' y='" << y + 4 << "' text-anchor='end'>" << esc(m["model"].get<std::string>()) << "</text>";
    if (!m["ci_low"].is_null())
      svg << "<line x1='" << x(m["ci_low"].get<double>()) << "' x2='" << x(m["ci_high"].get<double>()) << "' y1='" << y
          << "' y2='" << y << "' stroke='#889' stroke-width='2'/>";
    svg << "<circle cx='" << x(v) << "' cy='" << y << "' r='5' fill='#2a5bd7'/><text x='" << x(v) + 8 << "' y='" << y - 7
        << "'>" << fmt(v, 0) << "</text>";
  }
  svg << "</svg>";
  auto table = [&](const json& t, bool fraction) {
    std::ostringstream s;
    s << "<table><tr><th></th>";
    for (const auto& m : t["models"]) s << "<th>" << esc(m.get<std::string>()) << "</th>";
    s << "</tr>";
    for (std::size_t a = 0; a < t["models"].size(); ++a) {
      s << "<tr><th>" << esc(t["models"][a].get<std::string>()) << "</th>";
      for (const auto& v : t["matrix"][a]) {
        if (v.is_null()) {
          s << "<td class='none'>-</td>";
        } else if (fraction) {
          const double f = v.get<double>();
          s << "<td style='background:rgba(42,91,215," << fmt(0.1 + 0.6 * f, 2) << ")'>" << fmt(f, 2) << "</td>";
        } else {
          s << "<td>" << v.get<int64_t>() << "</td>";
        }
      }
      s << "</tr>";
    }
    s << "</table>";
    return s.str();
  };
  std::ostringstream h;
  h << "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>vhost arena leaderboard</title><style>"
       "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccd;padding:.3em .6em;text-align:right}th{background:#f3f4f8}td.none{color:#aaa}"
       "</style></head><body><h1>Arena leaderboard</h1><p>"
    << r["battles"].get<int64_t>() << " battles (" << r["anonymous_battles"].get<int64_t>()
    << " anonymous). Rating: Bradley–Terry maximum likelihood, as FastChat's leaderboard; bars: 95% interval from "
    << r["bootstrap"]["rounds"].get<int64_t>() << " bootstrap rounds (seed " << r["bootstrap"]["seed"].get<uint64_t>()
    << ").</p>" << svg.str() << "<table><tr><th>rank</th><th>model</th><th>rating</th><th>95% CI</th><th>online Elo</th>"
    << "<th>battles</th><th>wins</th><th>ties</th><th>losses</th></tr>";
  int rank = 0;
  for (const auto& m : models)
    h << "<tr><td>" << ++rank << "</td><th>" << esc(m["model"].get<std::string>()) << "</th><td>" << fmt(m["rating"].get<double>(), 1)
      << "</td><td>"
      << (m["ci_low"].is_null() ? std::string("-")
                                : fmt(m["ci_low"].get<double>(), 1) + " – " + fmt(m["ci_high"].get<double>(), 1))
      << "</td><td>" << fmt(m["online_elo"].get<double>(), 1) << "</td><td>" << m["battles"] << "</td><td>" << m["wins"]
      << "</td><td>" << m["ties"] << "</td><td>" << m["losses"] << "</td></tr>";
  h << "</table><h2>Win fraction (row beats column)</h2>" << table(r["win_fraction"], true) << "<h2>Battles per pair</h2>"
    << table(r["battle_counts"], false) << "</body></html>\n";
  return h.str();
}

}  // namespace vhost::host::arena
