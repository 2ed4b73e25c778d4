// LLaMA's tokenizer: a SentencePiece model (tokenizer.model), through the real library.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

struct vspm;

namespace vhost::llama {

class Tokenizer {
 public:
  // Throws vhost::Error naming the file when it is missing or not a SentencePiece model.
  static Tokenizer load(const std::filesystem::path& model_file);
  static Tokenizer from_serialized(const std::string& model_proto, const std::string& source);

  // User text is always text: "<s>" in it is encoded as the characters, never as BOS.
  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const;
  std::vector<std::string> pieces(const std::string& text) const;
  // encode() without BOS/EOS, plus each id's byte span [begin, end) in `text`.
  struct Spans {
    std::vector<int32_t> ids;
    std::vector<uint32_t> begin, end;
  };
  Spans encode_spans(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // The text of `ids` as it reads after `context` (a prompt's ids): decode(ids) alone drops the
  // leading space of the first piece, since SentencePiece strips the dummy prefix at the start
  // of a text — "Lily and Tom" + "▁were" must continue " were", not "were".
  std::string decode_after(const std::vector<int32_t>& context, const std::vector<int32_t>& ids) const;
  // The last few ids of `prompt` that decode to whole characters: the context for the two above.
  std::vector<int32_t> continuation_context(const std::vector<int32_t>& prompt) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t vocab_size() const;
  const std::filesystem::path& path() const { return path_; }

  // Trains a LLaMA-style SentencePiece BPE (byte fallback, split digits, no normalisation) on
  // a text file and writes DIR/tokenizer.model. Ids: unk 0, BOS 1, EOS 2.
  static std::filesystem::path train(const std::filesystem::path& input_text, int vocab_size,
                                     const std::filesystem::path& out_dir);

  // Turns ids arriving one at a time into text deltas that are always whole UTF-8 characters
  // and keep SentencePiece's spaces right (a piece's leading space depends on what precedes it).
  class StreamDecoder {
   public:
    // `context`: the prompt's ids (see continuation_context); empty when the text starts anew.
    explicit StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& context = {});
    std::string push(int32_t id);  // the new text, possibly empty while a character is incomplete
    std::string flush();           // whatever is still held back (invalid bytes as U+FFFD)

   private:
    // The text of ids [prefix_, read_) and of ids [prefix_, end): what was sent, and what is now.
    std::pair<std::string, std::string> window() const;
    const Tokenizer* tok_;
    std::vector<int32_t> ids_;
    std::size_t prefix_ = 0, read_ = 0;
  };

 private:
  std::shared_ptr<vspm> sp_;  // SentencePiece behind libvhost_spm.so (see spm_shim.h)
  int32_t vocab_ = 0, bos_ = -1, eos_ = -1, unk_ = -1;
  std::filesystem::path path_;
};

}  // namespace vhost::llama
