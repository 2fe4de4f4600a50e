tessera_add_test(model_runner_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_runner_test.cc LIBS tessera_worker)
tessera_add_test(kv_cache_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/kv_cache_test.cc LIBS tessera_worker)
tessera_add_test(tensor_parallel_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel_test.cc
                 LIBS tessera_worker tessera_parallel)
