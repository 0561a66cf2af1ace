#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]

mod common;
use common::*;

#[tokio::test]
async fn shipped_policies_refuse_unblocking_a_system_account() {
    let server = Server::start(std::path::Path::new("policies"), &[]);
    let (status, body) = server
        .post(
            "/openim/callbackAfterRemoveBlackCommand",
            r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1001","blackUserID":"sys_7"}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, refusal(20001, "system accounts cannot be unblocked", "contact support"));
    let (status, body) = server
        .post("/openim/callbackAfterRemoveBlackCommand", &wire(&sample("openim/callbackAfterRemoveBlackCommand.json")))
        .await;
    assert_eq!((status, body.as_str()), (200, ALLOW));
}
