//! What each IM server sends: every callback command callgate knows, with the top-level
//! keys its body may carry. The policy loader checks rules against it (a command no server
//! sends, a field no command of the rule carries); protocol decoding numbers OpenIM's
//! commands by it for metrics.
//!
//! Data only: this module imports nothing of callgate, so any layer may read it. The
//! entries come from the sample bodies in `tests/fixtures/samples` (their `INDEX.md` says
//! where each was read), and the Tencent commands without a sample from its documentation
//! (`TENCENT-BEFORE.md`); `tests/catalog.rs` holds every sample to its entry, so the two
//! cannot drift apart. A field that is sometimes absent is listed all the same: the catalog
//! says what a body *may* carry.

/// One callback command and the top-level keys of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// The command name, as in OpenIM's `callbackCommand` or Tencent's `CallbackCommand`.
    pub name: &'static str,
    /// Every top-level key the body may carry, in the order the server writes them.
    pub fields: &'static [&'static str],
}

/// Which IM server sends a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// OpenIM: its callbacks are decided by the policies.
    OpenIm,
    /// Tencent Cloud Chat: its callbacks are acknowledged and recorded.
    Tencent,
}

/// Where `name` is in [`OPENIM`]; `None` for a command OpenIM does not define.
pub fn openim_index(name: &str) -> Option<usize> {
    OPENIM.binary_search_by(|c| c.name.cmp(name)).ok()
}

/// The command called `name`, and which server sends it.
pub fn find(name: &str) -> Option<(Server, &'static Command)> {
    if let Some(i) = openim_index(name) {
        return Some((Server::OpenIm, &OPENIM[i]));
    }
    TENCENT.binary_search_by(|c| c.name.cmp(name)).ok().map(|i| (Server::Tencent, &TENCENT[i]))
}

/// Every command of every server: OpenIM's, then Tencent's.
pub fn all() -> impl Iterator<Item = (Server, &'static Command)> {
    OPENIM.iter().map(|c| (Server::OpenIm, c)).chain(TENCENT.iter().map(|c| (Server::Tencent, c)))
}

/// Every callback command the OpenIM server defines (`pkg/callbackstruct/constant.go`, main
/// branch; the five conversation and `callbackAfterMsgSaveDBCommand` ones are not in v3.8),
/// sorted by name for [`openim_index`]. Each body also carries `callbackCommand`.
#[rustfmt::skip]
pub const OPENIM: [Command; 52] = [
    Command {
        name: "callbackAfterAddFriendAgreeCommand",
        fields: &["callbackCommand", "fromUserID", "blackUserID", "HandleResult", "HandleMsg"],
    },
    Command {
        name: "callbackAfterAddFriendCommand",
        fields: &["callbackCommand", "fromUserID", "toUserID", "reqMsg"],
    },
    Command {
        name: "callbackAfterCreateGroupChatConversationsCommand",
        fields: &["callbackCommand", "ownerUserId", "conversationId", "conversationType", "groupId", "recvMsgOpt",
            "isPinned", "isPrivateChat", "burnDuration", "groupAtType", "attachedInfo", "ex"],
    },
    Command {
        name: "callbackAfterCreateGroupCommand",
        fields: &["callbackCommand", "groupID", "groupName", "notification", "introduction", "faceURL", "ownerUserID",
            "createTime", "memberCount", "ex", "status", "creatorUserID", "groupType", "needVerification",
            "lookMemberInfo", "applyMemberFriend", "notificationUpdateTime", "notificationUserID", "initMemberList"],
    },
    Command {
        name: "callbackAfterCreateSingleChatConversationsCommand",
        fields: &["callbackCommand", "ownerUserId", "conversationId", "conversationType", "userId", "recvMsgOpt",
            "isPinned", "isPrivateChat", "burnDuration", "groupAtType", "attachedInfo", "ex"],
    },
    Command {
        name: "callbackAfterDeleteFriendCommand",
        fields: &["callbackCommand", "ownerUserID", "friendUserID"],
    },
    Command {
        name: "callbackAfterDisMissGroupCommand",
        fields: &["callbackCommand", "groupID", "ownerID", "groupType", "membersID"],
    },
    Command {
        name: "callbackAfterGroupMsgReadCommand",
        fields: &["callbackCommand", "sendID", "receiveID", "unreadMsgNum", "contentType"],
    },
    Command {
        name: "callbackAfterImportFriendsCommand",
        fields: &["callbackCommand", "ownerUserID", "friendUserIDs"],
    },
    Command {
        name: "callbackAfterJoinGroupCommand",
        fields: &["callbackCommand", "operationID", "groupID", "reqMessage", "joinSource", "inviterUserID"],
    },
    Command {
        name: "callbackAfterKickGroupCommand",
        fields: &["callbackCommand", "groupID", "kickedUserIDs", "reason"],
    },
    Command {
        name: "callbackAfterMsgSaveDBCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex", "recvID", "groupID"],
    },
    Command {
        name: "callbackAfterQuitGroupCommand",
        fields: &["callbackCommand", "groupID", "userID"],
    },
    Command {
        name: "callbackAfterRemoveBlackCommand",
        fields: &["callbackCommand", "ownerUserID", "blackUserID"],
    },
    Command {
        name: "callbackAfterSendGroupMsgCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex", "groupID"],
    },
    Command {
        name: "callbackAfterSendSingleMsgCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex", "recvID"],
    },
    Command {
        name: "callbackAfterSetFriendRemarkCommand",
        fields: &["callbackCommand", "ownerUserID", "friendUserID", "remark"],
    },
    Command {
        name: "callbackAfterSetGroupInfoCommand",
        fields: &["callbackCommand", "operationID", "groupID", "groupName", "notification", "introduction", "faceURL",
            "ex", "needVerification", "lookMemberInfo", "applyMemberFriend"],
    },
    Command {
        name: "callbackAfterSetGroupInfoExCommand",
        fields: &["callbackCommand", "operationID", "groupID", "groupName", "notification", "introduction", "faceURL",
            "ex", "needVerification", "lookMemberInfo", "applyMemberFriend"],
    },
    Command {
        name: "callbackAfterSetGroupMemberInfoCommand",
        fields: &["callbackCommand", "groupID", "userID", "nickName", "faceURL", "roleLevel", "ex"],
    },
    Command {
        name: "callbackAfterSingleMsgReadCommand",
        fields: &["callbackCommand", "conversationID", "userID", "Seqs", "contentType"],
    },
    Command {
        name: "callbackAfterTransferGroupOwnerCommand",
        fields: &["callbackCommand", "groupID", "oldOwnerUserID", "newOwnerUserID"],
    },
    Command {
        name: "callbackAfterUpdateUserInfoCommand",
        fields: &["callbackCommand", "userID", "nickName", "faceURL", "ex"],
    },
    Command {
        name: "callbackAfterUpdateUserInfoExCommand",
        fields: &["callbackCommand", "userID", "nickName", "faceURL", "ex"],
    },
    Command {
        name: "callbackAfterUserKickOffCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "userID", "seq"],
    },
    Command {
        name: "callbackAfterUserOfflineCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "userID", "seq", "connID"],
    },
    Command {
        name: "callbackAfterUserOnlineCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "userID", "seq", "isAppBackground",
            "connID"],
    },
    Command {
        name: "callbackAfterUserRegisterCommand",
        fields: &["callbackCommand", "users"],
    },
    Command {
        name: "callbackBeforeAddBlackCommand",
        fields: &["callbackCommand", "ownerUserID", "blackUserID"],
    },
    Command {
        name: "callbackBeforeAddFriendAgreeCommand",
        fields: &["callbackCommand", "fromUserID", "blackUserID", "HandleResult", "HandleMsg"],
    },
    Command {
        name: "callbackBeforeAddFriendCommand",
        fields: &["callbackCommand", "fromUserID", "toUserID", "reqMsg", "ex"],
    },
    Command {
        name: "callbackBeforeAfterMsgCommand",
        fields: &["callbackCommand", "conversationID", "seq", "userID"],
    },
    Command {
        name: "callbackBeforeCreateGroupChatConversationsCommand",
        fields: &["callbackCommand", "ownerUserId", "conversationId", "conversationType", "groupId", "recvMsgOpt",
            "isPinned", "isPrivateChat", "burnDuration", "groupAtType", "attachedInfo", "ex"],
    },
    Command {
        name: "callbackBeforeCreateGroupCommand",
        fields: &["operationID", "callbackCommand", "groupID", "groupName", "notification", "introduction", "faceURL",
            "ownerUserID", "createTime", "memberCount", "ex", "status", "creatorUserID", "groupType",
            "needVerification", "lookMemberInfo", "applyMemberFriend", "notificationUpdateTime", "notificationUserID",
            "initMemberList"],
    },
    Command {
        name: "callbackBeforeCreateSingleChatConversationsCommand",
        fields: &["callbackCommand", "ownerUserId", "conversationId", "conversationType", "userId", "recvMsgOpt",
            "isPinned", "isPrivateChat", "burnDuration", "groupAtType", "attachedInfo", "ex"],
    },
    Command {
        name: "callbackBeforeGroupOnlinePushCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "clientMsgID", "sendID", "groupID",
            "contentType", "sessionType", "atUserIDList", "content", "seq"],
    },
    Command {
        name: "callbackBeforeImportFriendsCommand",
        fields: &["callbackCommand", "ownerUserID", "friendUserIDs"],
    },
    Command {
        name: "callbackBeforeInviteJoinGroupCommand",
        fields: &["callbackCommand", "operationID", "groupID", "reason", "invitedUserIDs"],
    },
    Command {
        name: "callbackBeforeJoinGroupCommand",
        fields: &["callbackCommand", "groupID", "groupType", "applyID", "reqMessage", "ex"],
    },
    Command {
        name: "callbackBeforeMembersJoinGroupCommand",
        fields: &["callbackCommand", "groupID", "memberList", "groupEx"],
    },
    Command {
        name: "callbackBeforeMsgModifyCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex"],
    },
    Command {
        name: "callbackBeforeOfflinePushCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "userIDList", "title", "desc", "ex",
            "iOSPushSound", "iOSBadgeCount", "signalInfo", "clientMsgID", "sendID", "groupID", "contentType",
            "sessionType", "atUserIDList", "content"],
    },
    Command {
        name: "callbackBeforeOnlinePushCommand",
        fields: &["callbackCommand", "operationID", "platformID", "platform", "userIDList", "clientMsgID", "sendID",
            "groupID", "contentType", "sessionType", "atUserIDList", "content"],
    },
    Command {
        name: "callbackBeforeSendGroupMsgCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex", "groupID"],
    },
    Command {
        name: "callbackBeforeSendSingleMsgCommand",
        fields: &["sendID", "callbackCommand", "serverMsgID", "clientMsgID", "operationID", "senderPlatformID",
            "senderNickname", "sessionType", "msgFrom", "contentType", "status", "sendTime", "createTime", "content",
            "seq", "atUserList", "faceURL", "ex", "recvID"],
    },
    Command {
        name: "callbackBeforeSetFriendRemarkCommand",
        fields: &["callbackCommand", "ownerUserID", "friendUserID", "remark"],
    },
    Command {
        name: "callbackBeforeSetGroupInfoCommand",
        fields: &["callbackCommand", "operationID", "groupID", "groupName", "notification", "introduction", "faceURL",
            "ex", "needVerification", "lookMemberInfo", "applyMemberFriend"],
    },
    Command {
        name: "callbackBeforeSetGroupInfoExCommand",
        fields: &["callbackCommand", "operationID", "groupID", "groupName", "notification", "introduction", "faceURL",
            "ex", "needVerification", "lookMemberInfo", "applyMemberFriend"],
    },
    Command {
        name: "callbackBeforeSetGroupMemberInfoCommand",
        fields: &["callbackCommand", "groupID", "userID", "nickName", "faceURL", "roleLevel", "ex"],
    },
    Command {
        name: "callbackBeforeUpdateUserInfoCommand",
        fields: &["callbackCommand", "userID", "nickName", "faceURL", "ex"],
    },
    Command {
        name: "callbackBeforeUpdateUserInfoExCommand",
        fields: &["callbackCommand", "userID", "nickName", "faceURL", "ex"],
    },
    Command {
        name: "callbackBeforeUserRegisterCommand",
        fields: &["callbackCommand", "users"],
    },
];

/// The Tencent Cloud Chat callback commands callgate knows, sorted by name: those with a
/// sample body, and the before-callbacks of `TENCENT-BEFORE.md`. Tencent has more (it
/// sends any of them to the one callback URL); a command missing here is not wrong, only
/// unknown to the checks.
#[rustfmt::skip]
pub const TENCENT: [Command; 18] = [
    Command {
        name: "C2C.CallbackAfterSendMsg",
        fields: &["CallbackCommand", "From_Account", "To_Account", "MsgSeq", "MsgRandom", "MsgTime", "MsgKey",
            "OnlineOnlyFlag", "SendMsgResult", "ErrorInfo", "UnreadMsgNum", "MsgBody", "CloudCustomData"],
    },
    Command {
        name: "C2C.CallbackBeforeSendMsg",
        fields: &["CallbackCommand", "From_Account", "To_Account", "MsgSeq", "MsgRandom", "MsgTime", "MsgKey",
            "OnlineOnlyFlag", "MsgBody", "CloudCustomData"],
    },
    Command {
        name: "Group.CallbackAfterNewMemberJoin",
        fields: &["CallbackCommand", "GroupId", "Type", "JoinType", "Operator_Account", "NewMemberList", "EventTime"],
    },
    Command {
        name: "Group.CallbackBeforeApplyJoinGroup",
        fields: &["CallbackCommand", "GroupId", "Type", "Requestor_Account", "EventTime"],
    },
    Command {
        name: "Group.CallbackBeforeCreateGroup",
        fields: &["CallbackCommand", "Operator_Account", "Owner_Account", "Type", "Name", "CreateGroupNum",
            "MemberList", "EventTime"],
    },
    Command {
        name: "Group.CallbackBeforeCreateTopic",
        fields: &["CallbackCommand", "Operator_Account", "Type", "Name"],
    },
    Command {
        name: "Group.CallbackBeforeInviteJoinGroup",
        fields: &["CallbackCommand", "GroupId", "Type", "Operator_Account", "DestinationMembers", "EventTime"],
    },
    Command {
        name: "Group.CallbackBeforeSendMsg",
        fields: &["CallbackCommand", "GroupId", "Type", "From_Account", "Operator_Account", "Random",
            "OnlineOnlyFlag", "MsgBody", "CloudCustomData", "TopicId", "EventTime"],
    },
    Command {
        name: "OfficialAccount.CallbackBeforeAddSubscriber",
        fields: &["CallbackCommand", "Official_Account", "Operator_Account", "SubscribeAccountList", "EventTime"],
    },
    Command {
        name: "OfficialAccount.CallbackBeforeCreateOfficialAccount",
        fields: &["CallbackCommand", "Operator_Account", "Owner_Account", "Name", "EventTime"],
    },
    Command {
        name: "OfficialAccount.CallbackBeforeSendMsg",
        fields: &["CallbackCommand", "Official_Account", "OnlineOnlyFlag", "MsgBody", "CloudCustomData", "EventTime"],
    },
    Command {
        name: "Sns.CallbackBlackListAdd",
        fields: &["CallbackCommand", "PairList"],
    },
    Command {
        name: "Sns.CallbackBlackListDelete",
        fields: &["CallbackCommand", "PairList"],
    },
    Command {
        name: "Sns.CallbackFriendAdd",
        fields: &["CallbackCommand", "PairList", "ClientCmd", "Admin_Account", "ForceFlag"],
    },
    Command {
        name: "Sns.CallbackFriendDelete",
        fields: &["CallbackCommand", "PairList"],
    },
    Command {
        name: "Sns.CallbackPrevFriendAdd",
        fields: &["CallbackCommand", "Requester_Account", "From_Account", "FriendItem", "AddType", "ForceAddFlags",
            "EventTime"],
    },
    Command {
        name: "Sns.CallbackPrevFriendResponse",
        fields: &["CallbackCommand", "Requester_Account", "From_Account", "ResponseFriendItem", "EventTime"],
    },
    Command {
        name: "State.StateChange",
        fields: &["CallbackCommand", "EventTime", "Info", "KickedDevice"],
    },
];

/// Where a refusal's code must lie, by who reads it: OpenIM, or the Tencent system whose
/// before-callback is refused (TENCENT-BEFORE.md: each system passes its own custom range
/// through to the client; a code outside it is not the operator's to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CodeFamily {
    /// OpenIM's `errCode`: 100 or more (below, OpenIM turns it into a generic server error).
    OpenIm,
    /// `C2C.*` before-callbacks: `ErrorCode` in [120001, 130000].
    C2c,
    /// `Group.*` before-callbacks: `ErrorCode` in [10100, 10200].
    Group,
    /// `Sns.CallbackPrevFriend*`: a refused item's `ResultCode` in [38000, 39000].
    Sns,
    /// `OfficialAccount.*` before-callbacks: `ErrorCode` in [120001, 130000].
    OfficialAccount,
}

impl CodeFamily {
    /// Every family, in the order messages list them.
    pub const ALL: [CodeFamily; 5] =
        [CodeFamily::OpenIm, CodeFamily::C2c, CodeFamily::Group, CodeFamily::Sns, CodeFamily::OfficialAccount];

    /// The key that names the family in a policy's `error: { code: { KEY: N } }`.
    pub fn key(self) -> &'static str {
        match self {
            CodeFamily::OpenIm => "openim",
            CodeFamily::C2c => "c2c",
            CodeFamily::Group => "group",
            CodeFamily::Sns => "sns",
            CodeFamily::OfficialAccount => "official_account",
        }
    }

    /// The family a policy calls `key`.
    pub fn from_key(key: &str) -> Option<CodeFamily> {
        CodeFamily::ALL.into_iter().find(|f| f.key() == key)
    }

    /// Who passes the family's codes to its client, as messages say it.
    pub fn reader(self) -> &'static str {
        match self {
            CodeFamily::OpenIm => "OpenIM",
            CodeFamily::C2c => "Tencent Chat for C2C.* callbacks",
            CodeFamily::Group => "Tencent Chat for Group.* callbacks",
            CodeFamily::Sns => "Tencent Chat for a refused friend item",
            CodeFamily::OfficialAccount => "Tencent Chat for OfficialAccount.* callbacks",
        }
    }

    /// The codes a refusal may carry.
    pub fn range(self) -> std::ops::RangeInclusive<i64> {
        match self {
            CodeFamily::OpenIm => 100..=i32::MAX as i64,
            CodeFamily::C2c | CodeFamily::OfficialAccount => 120_001..=130_000,
            CodeFamily::Group => 10_100..=10_200,
            CodeFamily::Sns => 38_000..=39_000,
        }
    }
}

/// How a Tencent before-callback is answered, beyond allow and refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TencentAnswer {
    /// One decision for the whole callback.
    Whole,
    /// One decision for the whole callback, which may also be to drop the message silently
    /// (`ErrorCode` 2: the sender is told it was sent, nobody receives it).
    Message,
    /// One decision per item of the list under `list`, each item's account under
    /// `account`; answered as `ResultItem` (friend callbacks).
    ResultItems { list: &'static str, account: &'static str },
    /// One decision per item; the refused items' accounts are listed under `refused`, or
    /// the whole callback refused when every item is (group invitations, subscribers).
    RefusedAccounts { list: &'static str, account: &'static str, refused: &'static str },
}

impl TencentAnswer {
    /// Whether the callback is decided item by item.
    pub fn is_per_item(self) -> bool {
        matches!(self, TencentAnswer::ResultItems { .. } | TencentAnswer::RefusedAccounts { .. })
    }
}

/// A Tencent callback that callgate decides (a before-callback): its family and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The command's name.
    pub name: &'static str,
    /// Where its refusal codes lie.
    pub family: CodeFamily,
    /// How its answer is shaped.
    pub answer: TencentAnswer,
    /// The keys of one item, for a callback decided item by item (empty otherwise).
    pub item_fields: &'static [&'static str],
}

/// The Tencent before-callbacks callgate decides (TENCENT-BEFORE.md, per command), sorted
/// by name. Every other Tencent command is a report of what happened: acknowledged only.
#[rustfmt::skip]
pub const TENCENT_DECIDED: [Decided; 11] = [
    Decided { name: "C2C.CallbackBeforeSendMsg", family: CodeFamily::C2c, answer: TencentAnswer::Message, item_fields: &[] },
    Decided { name: "Group.CallbackBeforeApplyJoinGroup", family: CodeFamily::Group, answer: TencentAnswer::Whole, item_fields: &[] },
    Decided { name: "Group.CallbackBeforeCreateGroup", family: CodeFamily::Group, answer: TencentAnswer::Whole, item_fields: &[] },
    Decided { name: "Group.CallbackBeforeCreateTopic", family: CodeFamily::Group, answer: TencentAnswer::Whole, item_fields: &[] },
    Decided {
        name: "Group.CallbackBeforeInviteJoinGroup",
        family: CodeFamily::Group,
        answer: TencentAnswer::RefusedAccounts {
            list: "DestinationMembers", account: "Member_Account", refused: "RefusedMembers_Account",
        },
        item_fields: &["Member_Account"],
    },
    Decided { name: "Group.CallbackBeforeSendMsg", family: CodeFamily::Group, answer: TencentAnswer::Message, item_fields: &[] },
    Decided {
        name: "OfficialAccount.CallbackBeforeAddSubscriber",
        family: CodeFamily::OfficialAccount,
        answer: TencentAnswer::RefusedAccounts {
            list: "SubscribeAccountList", account: "Subscriber_Account", refused: "RefusedSubscribers_Account",
        },
        item_fields: &["Subscriber_Account"],
    },
    Decided {
        name: "OfficialAccount.CallbackBeforeCreateOfficialAccount",
        family: CodeFamily::OfficialAccount,
        answer: TencentAnswer::Whole,
        item_fields: &[],
    },
    Decided {
        name: "OfficialAccount.CallbackBeforeSendMsg",
        family: CodeFamily::OfficialAccount,
        answer: TencentAnswer::Message,
        item_fields: &[],
    },
    Decided {
        name: "Sns.CallbackPrevFriendAdd",
        family: CodeFamily::Sns,
        answer: TencentAnswer::ResultItems { list: "FriendItem", account: "To_Account" },
        item_fields: &["To_Account", "Remark", "GroupName", "AddSource", "AddWording"],
    },
    Decided {
        name: "Sns.CallbackPrevFriendResponse",
        family: CodeFamily::Sns,
        answer: TencentAnswer::ResultItems { list: "ResponseFriendItem", account: "To_Account" },
        item_fields: &["To_Account", "Remark", "TagName", "ResponseAction"],
    },
];

/// The Tencent before-callback called `name`, when callgate decides it.
pub fn tencent_decided(name: &str) -> Option<&'static Decided> {
    TENCENT_DECIDED.binary_search_by(|d| d.name.cmp(name)).ok().map(|i| &TENCENT_DECIDED[i])
}

/// Whether `key` is the body key of a per-item callback's list of items.
pub fn is_item_list(key: &str) -> bool {
    TENCENT_DECIDED.iter().any(|d| match d.answer {
        TencentAnswer::ResultItems { list, .. } | TencentAnswer::RefusedAccounts { list, .. } => list == key,
        TencentAnswer::Whole | TencentAnswer::Message => false,
    })
}

/// Whether `name` is written as Tencent names its commands (`System.Name`). OpenIM's
/// command names never hold a dot.
pub fn is_tencent_name(name: &str) -> bool {
    name.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_sorted_and_unique_for_binary_search() {
        assert!(OPENIM.windows(2).all(|w| w[0].name < w[1].name));
        assert!(TENCENT.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(
            openim_index("callbackAfterRemoveBlackCommand").map(|i| OPENIM[i].name),
            Some("callbackAfterRemoveBlackCommand")
        );
        assert_eq!(openim_index("callbackNope"), None);
        assert_eq!(
            find("Sns.CallbackBlackListDelete").map(|(s, c)| (s, c.name)),
            Some((Server::Tencent, "Sns.CallbackBlackListDelete"))
        );
        assert_eq!(find("Sns.CallbackNope"), None);
        assert!(TENCENT_DECIDED.windows(2).all(|w| w[0].name < w[1].name));
        for decided in &TENCENT_DECIDED {
            assert!(find(decided.name).is_some(), "{} is not in TENCENT", decided.name);
        }
        assert_eq!(tencent_decided("Sns.CallbackPrevFriendAdd").map(|d| d.family), Some(CodeFamily::Sns));
        assert_eq!(tencent_decided("Sns.CallbackFriendAdd"), None);
    }

    #[test]
    fn every_body_names_its_command() {
        for (server, command) in all() {
            let key = match server {
                Server::OpenIm => "callbackCommand",
                Server::Tencent => "CallbackCommand",
            };
            assert!(command.fields.contains(&key), "{} has no `{key}`", command.name);
        }
    }
}
