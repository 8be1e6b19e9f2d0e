//! Generated protobuf types and gRPC stubs: the etcd v3 API (`etcdserverpb`, `mvccpb`, `authpb`)
//! kvstore's internal records (`kvstorepb`) and the peer service (`peerpb`).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod kvstorepb {
    tonic::include_proto!("kvstorepb");
}

pub mod peerpb {
    tonic::include_proto!("peerpb");
}
