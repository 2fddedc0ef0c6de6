/* A V8-shaped ELF: the embedded blob and its size symbol, Node's version string. */
const unsigned char v8_Default_embedded_blob_code_[256] __attribute__((aligned(64))) = {1};
const unsigned int v8_Default_embedded_blob_code_size_ = sizeof v8_Default_embedded_blob_code_;
const char version[] = "v8 11.3.244.8-node.38";
void _ZN2v88internal12_GLOBAL__N_136FunctionInStaticBinaryForAddressHintEv(void) {}
void _start(void) {}
