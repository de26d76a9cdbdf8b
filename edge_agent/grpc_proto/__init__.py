"""The Open Inference Protocol's gRPC definition (predict_v2.proto) and its generated modules (``make grpc``)."""
