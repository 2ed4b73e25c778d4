#include "spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <iostream>
#include <cstring>
#include <string>
#include <vector>

#define VSPM_EXPORT extern "C" __attribute__((visibility("default")))

struct vspm {
  sentencepiece::SentencePieceProcessor sp;
};

static void set_err(char** err, const std::string& msg) {
  if (err) *err = strdup(msg.c_str());
}

VSPM_EXPORT vspm* vspm_load(const char* proto, size_t size, char** err) {
  try {
    auto* p = new vspm;
    auto st = p->sp.LoadFromSerializedProto(std::string(proto, size));
    if (!st.ok()) {
      set_err(err, st.ToString());
      delete p;
      return nullptr;
    }
    return p;
  } catch (const std::exception& e) {
    set_err(err, e.what());
    return nullptr;
  }
}

VSPM_EXPORT void vspm_free(vspm* p) { delete p; }

VSPM_EXPORT int32_t vspm_info(const vspm* p, int32_t what) {
  switch (what) {
    case VSPM_VOCAB: return p->sp.GetPieceSize();
    case VSPM_BOS: return p->sp.bos_id();
    case VSPM_EOS: return p->sp.eos_id();
    case VSPM_UNK: return p->sp.unk_id();
    default: return -1;
  }
}

VSPM_EXPORT int vspm_encode(const vspm* p, const char* text, size_t n, vspm_ids_fn ids_fn, vspm_str_fn str_fn,
                            void* ctx, char** err) {
  try {
    std::string t(text, n);
    if (ids_fn) {
      std::vector<int> ids;
      auto st = p->sp.Encode(t, &ids);
      if (!st.ok()) return set_err(err, st.ToString()), 1;
      std::vector<int32_t> out(ids.begin(), ids.end());
      ids_fn(ctx, out.data(), out.size());
    } else {
      std::vector<std::string> pieces;
      auto st = p->sp.Encode(t, &pieces);
      if (!st.ok()) return set_err(err, st.ToString()), 1;
      for (const auto& s : pieces) str_fn(ctx, s.data(), s.size());
    }
    return 0;
  } catch (const std::exception& e) {
    set_err(err, e.what());
    return 1;
  }
}

VSPM_EXPORT int vspm_encode_spans(const vspm* p, const char* text, size_t n, vspm_spans_fn out, void* ctx,
                                  char** err) {
  try {
    auto spt = p->sp.EncodeAsImmutableProto(std::string(text, n));
    const size_t count = spt.pieces_size();
    std::vector<int32_t> ids(count);
    std::vector<uint32_t> b(count), e(count);
    for (size_t i = 0; i < count; ++i) {
      auto piece = spt.pieces(static_cast<int>(i));
      ids[i] = static_cast<int32_t>(piece.id());
      b[i] = piece.begin();
      e[i] = piece.end();
    }
    out(ctx, ids.data(), b.data(), e.data(), count);
    return 0;
  } catch (const std::exception& ex) {
    set_err(err, ex.what());
    return 1;
  }
}

VSPM_EXPORT int vspm_decode(const vspm* p, const int32_t* ids, size_t n, vspm_str_fn out, void* ctx, char** err) {
  try {
    std::vector<int> in(ids, ids + n);
    std::string text;
    auto st = p->sp.Decode(in, &text);
    if (!st.ok()) return set_err(err, st.ToString()), 1;
    out(ctx, text.data(), text.size());
    return 0;
  } catch (const std::exception& e) {
    set_err(err, e.what());
    return 1;
  }
}

VSPM_EXPORT int vspm_train(const char* args, char** err) {
  try {
    auto st = sentencepiece::SentencePieceTrainer::Train(args);
    if (!st.ok()) return set_err(err, st.ToString()), 1;
    return 0;
  } catch (const std::exception& e) {
    set_err(err, e.what());
    return 1;
  }
}

VSPM_EXPORT void vspm_free_string(char* s) { std::free(s); }

#ifdef VHOST_SPM_TRAIN_MAIN
// vhost_spm_train ARGS: SentencePiece training in its own process (see tokenizer.cpp).
#include <iostream>
int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: vhost_spm_train '--input=... --model_prefix=... ...'\n";
    return 2;
  }
  char* err = nullptr;
  if (vspm_train(argv[1], &err) != 0) {
    std::cerr << (err ? err : "training failed") << "\n";
    return 1;
  }
  return 0;
}
#endif
