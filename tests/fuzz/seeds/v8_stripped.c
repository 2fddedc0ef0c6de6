/* A stripped V8-shaped library: the blob only behind the exported accessors' code. */
static const unsigned char blob[256] = {1};
static const unsigned int blob_size = sizeof blob;
const char version[] = "v8 10.2.154.26-node.26";
const unsigned char *_ZN2v88internal23DefaultEmbeddedBlobCodeEv(void) { return blob; }
unsigned int _ZN2v88internal27DefaultEmbeddedBlobCodeSizeEv(void) {
    return *(volatile const unsigned int *)&blob_size;
}
const unsigned char *_ZNK2v88internal7Isolate18embedded_blob_codeEv(void) { return blob; }
