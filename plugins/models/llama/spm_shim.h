/* A C shim around SentencePiece, built as its own shared library (libvhost_spm.so) and loaded
 * with RTLD_LOCAL | RTLD_DEEPBIND. Why: Debian's libsentencepiece carries and exports its own
 * protobuf-lite 3.14, while libtorch uses the shared protobuf 3.21; in one symbol scope the two
 * interpose and crash in static initialisers. Behind this shim they never share a scope.
 * Results come back through callbacks; error strings are malloc'd and freed with vspm_free_string. */
#ifndef VHOST_SPM_SHIM_H
#define VHOST_SPM_SHIM_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
typedef struct vspm vspm;
typedef void (*vspm_ids_fn)(void* ctx, const int32_t* ids, size_t n);
typedef void (*vspm_str_fn)(void* ctx, const char* s, size_t n);
enum { VSPM_VOCAB = 0, VSPM_BOS = 1, VSPM_EOS = 2, VSPM_UNK = 3 };

vspm* vspm_load(const char* model_proto, size_t size, char** err);
void vspm_free(vspm* p);
int32_t vspm_info(const vspm* p, int32_t what);
/* 0 on success. encode: ids through ids_fn, or pieces (one call each) through str_fn. */
int vspm_encode(const vspm* p, const char* text, size_t n, vspm_ids_fn ids_fn, vspm_str_fn str_fn, void* ctx, char** err);
/* ids with the byte span [begin, end) of `text` each one covers. */
typedef void (*vspm_spans_fn)(void* ctx, const int32_t* ids, const uint32_t* begin, const uint32_t* end, size_t n);
int vspm_encode_spans(const vspm* p, const char* text, size_t n, vspm_spans_fn out, void* ctx, char** err);
int vspm_decode(const vspm* p, const int32_t* ids, size_t n, vspm_str_fn out, void* ctx, char** err);
int vspm_train(const char* args, char** err); /* use the vhost_spm_train executable, not in-process */
void vspm_free_string(char* s);
#ifdef __cplusplus
}
#endif
#endif
