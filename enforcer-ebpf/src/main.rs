//! The enforcer's kernel programs. See `docs/dataplane.md`.
#![no_std]
#![no_main]
// Inline assembly for unaligned packet loads (see `skb/bytes.rs`).
#![feature(asm_experimental_arch)]

mod judge;
mod maps;
mod registration;
mod skb;
mod sock;
mod sock_addr;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock, cgroup_sock_addr},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext, SockContext},
};
use enforcer_common::verdict::Direction;
use sock_addr::Hook;

#[cgroup_skb(egress)]
pub fn enforcer_egress(ctx: SkBuffContext) -> i32 {
    skb::handle(&ctx, Direction::Egress)
}

#[cgroup_skb(ingress)]
pub fn enforcer_ingress(ctx: SkBuffContext) -> i32 {
    skb::handle(&ctx, Direction::Ingress)
}

#[cgroup_sock_addr(connect4)]
pub fn enforcer_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr::handle(&ctx, 4, Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn enforcer_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr::handle(&ctx, 6, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn enforcer_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::handle(&ctx, 4, Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enforcer_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::handle(&ctx, 6, Hook::Sendmsg)
}

#[cgroup_sock(post_bind4)]
pub fn enforcer_post_bind4(ctx: SockContext) -> i32 {
    sock::bound(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn enforcer_post_bind6(ctx: SockContext) -> i32 {
    sock::bound(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn enforcer_sock_release(ctx: SockContext) -> i32 {
    sock::released(&ctx)
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn enforcer_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    registration::created(&ctx);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn enforcer_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    registration::removed(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
