// A library that cannot load: it needs a variable nothing defines (data relocations are bound at
// load time, so dlopen itself fails).
extern "C" int vhost_test_symbol_that_does_not_exist;
extern "C" __attribute__((visibility("default"))) int vhost_test_broken() {
  return vhost_test_symbol_that_does_not_exist;
}
