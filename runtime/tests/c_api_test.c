/* The C API from C (so the header is checked as C, too): argument checks, error codes and
 * messages, call-order errors, and, given an artifact of mtcnn_rnet (float32[1,3,24,24] input,
 * float32 outputs), a full set/run/read cycle.
 *
 *   bitsmith_c_api_test [ARTIFACT_DIR INPUT.npy]
 */
#include <bitsmith/runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
              bsm_last_error());                                                 \
      ++failures;                                                                \
    }                                                                            \
  } while (0)

#define CHECK_ERROR(call, status, needle)                                        \
  do {                                                                           \
    bsm_status _s = (call);                                                      \
    if (_s != (status) || strstr(bsm_last_error(), (needle)) == NULL) {          \
      fprintf(stderr, "%s:%d: %s gave %s \"%s\", expected %s containing \"%s\"\n", __FILE__, __LINE__, #call, \
              bsm_status_name(_s), bsm_last_error(), bsm_status_name(status), (needle)); \
      ++failures;                                                                \
    }                                                                            \
  } while (0)

static void* fail_in_other_thread(void* unused) {
  bsm_model* m = NULL;
  (void)unused;
  bsm_open("/nonexistent/other-thread", &m);
  return NULL;
}

static void without_artifact(void) {
  bsm_model* m = (bsm_model*)1;
  pthread_t thread;
  CHECK(strlen(bsm_version()) > 0);
  CHECK(strcmp(bsm_status_name(BSM_ERROR_VERIFICATION), "BSM_ERROR_VERIFICATION") == 0);
  CHECK_ERROR(bsm_open(NULL, &m), BSM_ERROR_INVALID_ARGUMENT, "artifact_dir is NULL");
  CHECK(m == NULL);
  CHECK_ERROR(bsm_open("x", NULL), BSM_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERROR(bsm_open("/nonexistent/artifact", &m), BSM_ERROR_ARTIFACT, "/nonexistent/artifact is not an artifact");
  /* The message is per thread: a failure elsewhere leaves this thread's message alone. */
  pthread_create(&thread, NULL, fail_in_other_thread, NULL);
  pthread_join(thread, NULL);
  CHECK(strstr(bsm_last_error(), "/nonexistent/artifact ") != NULL);
  CHECK(bsm_input_count(NULL) == 0 && bsm_output_count(NULL) == 0);
  CHECK_ERROR(bsm_run(NULL), BSM_ERROR_INVALID_ARGUMENT, "model is NULL");
  bsm_close(NULL);
}

static void with_artifact(const char* dir, const char* input_npy) {
  bsm_model* m = NULL;
  bsm_tensor_info info;
  size_t index = 99;
  int64_t good[4] = {1, 3, 24, 24}, bad[4] = {1, 3, 25, 24};
  float* pixels = calloc(3 * 24 * 24, sizeof(float));
  float prob[2] = {0}, tiny[1];
  const void* data = NULL;
  double ms[3] = {0};

  CHECK(bsm_open(dir, &m) == BSM_OK);
  if (m == NULL) return;
  CHECK(bsm_input_count(m) == 1 && bsm_output_count(m) == 2);
  CHECK(bsm_input_info(m, 0, &info) == BSM_OK);
  CHECK(strcmp(info.name, "input") == 0 && strcmp(info.dtype, "float32") == 0 && info.ndim == 4 &&
        info.shape[2] == 24 && info.num_bytes == 3 * 24 * 24 * 4);
  CHECK_ERROR(bsm_input_info(m, 1, &info), BSM_ERROR_INVALID_ARGUMENT, "input index 1 is out of range");
  CHECK(bsm_find_output(m, "prob", &index) == BSM_OK && index == 1);
  CHECK_ERROR(bsm_find_output(m, "nope", &index), BSM_ERROR_INVALID_ARGUMENT, "no output 'nope' (its outputs: 'box', 'prob')");

  CHECK_ERROR(bsm_run(m), BSM_ERROR_STATE, "input 'input' was never set");
  CHECK_ERROR(bsm_output_data(m, 0, &data), BSM_ERROR_STATE, "run the model first");
  CHECK_ERROR(bsm_set_input(m, 0, pixels, "float32", 4, bad), BSM_ERROR_MISMATCH,
              "input 'input' must be float32[1,3,24,24], got float32[1,3,25,24]");
  CHECK_ERROR(bsm_set_input(m, 0, pixels, "float64", 4, good), BSM_ERROR_MISMATCH, "got float64[1,3,24,24]");
  CHECK_ERROR(bsm_set_input(m, 0, pixels, "float32", 2, good), BSM_ERROR_MISMATCH, "got float32[1,3]");
  CHECK(bsm_set_input(m, 0, pixels, "float32", 4, good) == BSM_OK);
  CHECK(bsm_run(m) == BSM_OK);
  CHECK(bsm_get_output(m, 1, prob, sizeof prob) == BSM_OK);
  CHECK(prob[0] + prob[1] > 0.99f && prob[0] + prob[1] < 1.01f); /* a softmax */
  CHECK_ERROR(bsm_get_output(m, 1, tiny, sizeof tiny), BSM_ERROR_MISMATCH, "needs 8 bytes, the buffer holds 4");

  CHECK(bsm_set_input_npy(m, 0, input_npy) == BSM_OK);
  CHECK(bsm_time(m, 1, 3, ms) == BSM_OK);
  CHECK(ms[0] > 0 && ms[1] > 0 && ms[2] > 0);
  CHECK(bsm_output_data(m, 1, &data) == BSM_OK && data != NULL);
  CHECK_ERROR(bsm_time(m, 0, 0, ms), BSM_ERROR_INVALID_ARGUMENT, "repeat >= 1");
  CHECK_ERROR(bsm_set_input_npy(m, 0, "/nonexistent.npy"), BSM_ERROR_IO, "cannot open /nonexistent.npy");
  bsm_close(m);
  free(pixels);
}

int main(int argc, char** argv) {
  without_artifact();
  if (argc >= 3) with_artifact(argv[1], argv[2]);
  printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
