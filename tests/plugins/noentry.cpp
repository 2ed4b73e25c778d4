// A valid shared library that is not a vhost plugin: no vhost_plugin_entry.
extern "C" __attribute__((visibility("default"))) int vhost_test_not_a_plugin() { return 42; }
