// Sampling parameters, declared once. Every entry point that samples — the `generate`, `chat`
// and `eval` stages, their CLI flags (`vhost generate`, `vhost chat`) and the HTTP API
// (`vhost serve`, `vhost api`) — checks a value against the same range here and reports it in
// the same words. Defaults differ per entry point on purpose and are listed here once:
//
//   | entry point                  | temperature | why                                          |
//   | generate stage / CLI         | 0 (greedy)  | a continuation that can be reproduced         |
//   | chat stage / CLI             | 0.7         | FastChat's CLI                                |
//   | eval stage (answers)         | 0.7         | FastChat's gen_model_answer.py                |
//   | HTTP API (serve, api)        | 1.0         | OpenAI's API, which clients expect            |
//
// Header-only, no dependencies: embedders that build their own front ends use the same ranges.
#pragma once

#include <cmath>
#include <sstream>
#include <string>

namespace vhost::host::sampling {

struct Range {
  const char* key;   // the name in pipelines and request bodies ("top_p")
  const char* flag;  // the CLI flag ("--top-p")
  double min, max;
  bool min_open;     // min itself excluded: (min, max]
  const char* help;

  bool contains(double v) const { return !std::isnan(v) && (min_open ? v > min : v >= min) && v <= max; }
  // "[0, 2]", "(0, 1]"
  std::string text() const {
    auto num = [](double x) {
      std::ostringstream s;
      s << x;
      return s.str();
    };
    return std::string(min_open ? "(" : "[") + num(min) + ", " + num(max) + "]";
  }
  // "temperature must be in [0, 2]"
  std::string must() const { return std::string(key) + " must be in " + text(); }
};

inline constexpr Range kTemperature{"temperature", "--temperature", 0, 2, false,
                                    "0: greedy; higher is more random (at most 2, as OpenAI's API)"};
inline constexpr Range kTopP{"top_p", "--top-p", 0, 1, true, "nucleus sampling: the most likely tokens that make up this probability"};
inline constexpr Range kTopK{"top_k", "--top-k", -1, 1 << 30, false, "sample from the k most likely (0 or -1: all)"};
inline constexpr Range kRepetitionPenalty{"repetition_penalty", "--repetition-penalty", 0, 10, true,
                                          "> 1 discourages tokens already in the text (CTRL's penalty; 1: off)"};
inline constexpr Range kPresencePenalty{"presence_penalty", "--presence-penalty", -2, 2, false,
                                        "subtracted once from the logit of every token already generated"};
inline constexpr Range kFrequencyPenalty{"frequency_penalty", "--frequency-penalty", -2, 2, false,
                                         "subtracted from a token's logit per time it was generated"};

// The defaults of the table above.
inline constexpr double kTemperatureGenerate = 0.0, kTemperatureChat = 0.7, kTemperatureEval = 0.7, kTemperatureApi = 1.0;

}  // namespace vhost::host::sampling
