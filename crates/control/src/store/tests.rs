use super::*;

const ACC: &str = "ACC1";
const OTHER: &str = "ACC2";

async fn mem() -> Store {
    Store::open("sqlite::memory:").await.unwrap()
}

fn flow(name: &str) -> NewFlow {
    NewFlow {
        name: name.into(),
        stream_url: "wss://bot.example/ws".into(),
        protocol: FlowProtocol::Exotel,
        direction: FlowDirection::Bidirectional,
        custom_parameters: serde_json::Map::new(),
        on_stream_end: OnStreamEnd::Hangup,
        agent_assist: false,
        fallback: FlowFallback::Hangup,
    }
}

#[test]
fn iso8601_dates() {
    assert_eq!(iso8601_utc(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    assert_eq!(iso8601_utc(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
    assert_eq!(iso8601_utc(-1, 0), "1969-12-31T23:59:59.000Z");
    assert_eq!(iso8601_utc(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    assert!(now_iso8601().ends_with('Z'));
}

#[test]
fn ids_have_prefix_and_32_hex() {
    let id = new_id("TR");
    assert_eq!(id.len(), 34);
    assert!(id.starts_with("TR"));
    assert!(id[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(new_id("TR"), new_id("TR"));
}

#[tokio::test]
async fn trunk_crud_and_account_scoping() {
    let s = mem().await;
    let t = s
        .create_trunk(ACC, &NewTrunk::new("acme", "ANY-ANY", "acme.example"))
        .await
        .unwrap();
    assert!(t.sid.starts_with("TR"));
    assert_eq!(t.status, "active");
    assert_eq!(t.calls_per_minute, 200);
    assert_eq!(s.trunk(ACC, &t.sid).await.unwrap(), Some(t.clone()));
    assert_eq!(s.trunk(OTHER, &t.sid).await.unwrap(), None);

    // Same name in the same account is a duplicate; in another account it is fine.
    let dup = s
        .create_trunk(ACC, &NewTrunk::new("acme", "ANY-ANY", "x.example"))
        .await;
    assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");
    s.create_trunk(OTHER, &NewTrunk::new("acme", "ANY-ANY", "x.example"))
        .await
        .unwrap();

    let t2 = s
        .create_trunk(ACC, &NewTrunk::new("beta", "ANY-ANY", "b.example"))
        .await
        .unwrap();
    let all = s.list_trunks(ACC, Page::ALL).await.unwrap();
    assert_eq!(all.len(), 2);
    let page = s
        .list_trunks(
            ACC,
            Page {
                limit: 1,
                offset: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].sid, all[1].sid);

    let up = s
        .update_trunk(
            ACC,
            &t2.sid,
            &TrunkUpdate {
                status: Some("inactive".into()),
                max_concurrent_calls: Some(Some(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.status, "inactive");
    assert_eq!(up.max_concurrent_calls, Some(5));
    assert_eq!(s.trunk(ACC, &t2.sid).await.unwrap(), Some(up));
    assert_eq!(
        s.update_trunk(OTHER, &t2.sid, &TrunkUpdate::default())
            .await
            .unwrap(),
        None
    );

    assert_eq!(s.delete_trunk(OTHER, &t.sid).await.unwrap(), None);
    assert_eq!(s.delete_trunk(ACC, &t.sid).await.unwrap(), Some(t.clone()));
    assert_eq!(s.trunk(ACC, &t.sid).await.unwrap(), None);
    assert_eq!(s.delete_trunk(ACC, &t.sid).await.unwrap(), None);
}

#[tokio::test]
async fn numbers_crud_unique_and_flow_check() {
    let s = mem().await;
    let t = s
        .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();
    let t_other = s
        .create_trunk(OTHER, &NewTrunk::new("b", "ANY-ANY", "b.example"))
        .await
        .unwrap();
    let n = s
        .add_number(&t.sid, "+918000000001", &Mode::Pstn)
        .await
        .unwrap();
    assert_eq!(n.account_sid, ACC);
    assert_eq!(n.to_mode(), Mode::Pstn);
    // A number routes to one trunk: duplicate even in another account.
    assert!(matches!(
        s.add_number(&t_other.sid, "+918000000001", &Mode::Pstn)
            .await,
        Err(StoreError::Duplicate(_))
    ));
    assert!(matches!(
        s.add_number("TRnope", "+918000000002", &Mode::Pstn).await,
        Err(StoreError::NotFound)
    ));

    // Flow mode needs a flow of the same account.
    let f = s.create_flow(ACC, &flow("bot")).await.unwrap();
    let f_other = s.create_flow(OTHER, &flow("bot")).await.unwrap();
    let flow_mode = |id: &str| Mode::Flow { flow_id: id.into() };
    assert!(matches!(
        s.add_number(&t.sid, "+918000000002", &flow_mode(&f_other.id))
            .await,
        Err(StoreError::UnknownFlow(_))
    ));
    let n2 = s
        .add_number(&t.sid, "+918000000002", &flow_mode(&f.id))
        .await
        .unwrap();
    assert_eq!(n2.to_mode(), flow_mode(&f.id));
    assert_eq!(s.number(&t.sid, &n2.id).await.unwrap(), Some(n2.clone()));
    assert_eq!(s.list_numbers(&t.sid, Page::ALL).await.unwrap().len(), 2);

    let up = s
        .update_number(&t.sid, &n2.id, "+918000000003", &Mode::Pstn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((up.number.as_str(), up.flow_id), ("+918000000003", None));
    assert!(matches!(
        s.update_number(&t.sid, &n2.id, "+918000000001", &Mode::Pstn)
            .await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(
        s.update_number(&t_other.sid, &n2.id, "+918000000009", &Mode::Pstn)
            .await
            .unwrap(),
        None
    );
    assert!(s.delete_number(&t.sid, &n2.id).await.unwrap().is_some());
    assert!(s.delete_number(&t.sid, &n2.id).await.unwrap().is_none());
    assert_eq!(s.list_numbers(&t.sid, Page::ALL).await.unwrap(), vec![n]);
}

#[tokio::test]
async fn ips_destinations_credentials_settings_crud() {
    let s = mem().await;
    let t = s
        .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();

    let ip = s
        .add_ip(&t.sid, IpNet::parse("10.0.1.5/16").unwrap())
        .await
        .unwrap();
    assert_eq!((ip.ip.as_str(), ip.mask), ("10.0.0.0", 16));
    assert!(matches!(
        s.add_ip(&t.sid, IpNet::parse("10.0.0.0/16").unwrap()).await,
        Err(StoreError::Duplicate(_))
    ));
    assert!(matches!(
        s.add_ip("TRnope", IpNet::parse("10.0.0.0/16").unwrap())
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.list_ips(&t.sid, Page::ALL).await.unwrap(),
        vec![ip.clone()]
    );
    assert_eq!(s.delete_ip(&t.sid, &ip.id).await.unwrap(), Some(ip));
    assert!(s.list_ips(&t.sid, Page::ALL).await.unwrap().is_empty());

    let d1 = s
        .add_destination(&t.sid, "sip:10.0.0.1:5060", None, None)
        .await
        .unwrap();
    let d2 = s
        .add_destination(&t.sid, "sip:10.0.0.2:5060", None, Some(5))
        .await
        .unwrap();
    let d0 = s
        .add_destination(&t.sid, "sip:10.0.0.3:5060", Some(-1), None)
        .await
        .unwrap();
    assert_eq!((d1.priority, d1.weight), (0, 1));
    assert_eq!((d2.priority, d2.weight), (1, 5));
    assert!(matches!(
        s.add_destination(&t.sid, "sip:10.0.0.1:5060", None, None)
            .await,
        Err(StoreError::Duplicate(_))
    ));
    let ids: Vec<_> = s
        .list_destinations(&t.sid, Page::ALL)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, vec![d0.id.clone(), d1.id.clone(), d2.id.clone()]);
    assert!(s
        .delete_destination(&t.sid, &d1.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.list_destinations(&t.sid, Page::ALL).await.unwrap().len(),
        2
    );

    let c = s
        .add_credential(
            &t.sid,
            &NewCredential {
                user_name: "pbx".into(),
                password: "s3cret".into(),
                friendly_name: Some("office".into()),
            },
        )
        .await
        .unwrap();
    let dup = NewCredential {
        user_name: "pbx".into(),
        password: "other".into(),
        friendly_name: None,
    };
    assert!(matches!(
        s.add_credential(&t.sid, &dup).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(s.credential(ACC, &c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(s.credential(OTHER, &c.id).await.unwrap(), None);
    let up = s
        .update_credential(
            ACC,
            &c.id,
            &CredentialUpdate {
                password: Some("n3w".into()),
                friendly_name: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (up.user_name.as_str(), up.password.as_str()),
        ("pbx", "n3w")
    );
    assert_eq!(up.friendly_name, None);
    assert_eq!(
        s.update_credential(OTHER, &c.id, &CredentialUpdate::default())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.list_credentials(&t.sid, Page::ALL).await.unwrap(),
        vec![up]
    );
    assert_eq!(s.delete_credential(OTHER, &c.id).await.unwrap(), None);
    assert!(s.delete_credential(ACC, &c.id).await.unwrap().is_some());
    assert!(s
        .list_credentials(&t.sid, Page::ALL)
        .await
        .unwrap()
        .is_empty());

    s.set_setting(&t.sid, "trunk_external_alias", "+918000000001")
        .await
        .unwrap();
    s.set_setting(&t.sid, "trunk_external_alias", "+918000000002")
        .await
        .unwrap();
    let settings = s.list_settings(&t.sid, Page::ALL).await.unwrap();
    assert_eq!(settings.len(), 1);
    assert_eq!(settings[0].value, "+918000000002");
    assert!(matches!(
        s.set_setting("TRnope", "x", "y").await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn flows_crud_and_in_use() {
    let s = mem().await;
    let mut new = flow("bot");
    new.custom_parameters
        .insert("lang".into(), serde_json::json!("hi-IN"));
    new.on_stream_end = OnStreamEnd::Connect {
        destination: "sip:agent@pbx.example".into(),
    };
    let f = s.create_flow(ACC, &new).await.unwrap();
    assert!(f.id.starts_with("FL"));
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), Some(f.clone()));
    assert_eq!(s.flow(OTHER, &f.id).await.unwrap(), None);
    assert_eq!(s.list_flows(ACC, Page::ALL).await.unwrap(), vec![f.clone()]);
    assert!(s.list_flows(OTHER, Page::ALL).await.unwrap().is_empty());

    let mut changed = flow("bot2");
    changed.protocol = FlowProtocol::Twilio;
    changed.direction = FlowDirection::Unidirectional;
    let up = s.update_flow(ACC, &f.id, &changed).await.unwrap().unwrap();
    assert_eq!(up.date_created, f.date_created);
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), Some(up.clone()));
    assert_eq!(s.update_flow(OTHER, &f.id, &changed).await.unwrap(), None);

    let t = s
        .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();
    let n = s
        .add_number(
            &t.sid,
            "+918000000001",
            &Mode::Flow {
                flow_id: f.id.clone(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        s.delete_flow(ACC, &f.id).await,
        Err(StoreError::FlowInUse(1))
    ));
    s.delete_number(&t.sid, &n.id).await.unwrap();
    assert_eq!(s.delete_flow(OTHER, &f.id).await.unwrap(), None);
    assert_eq!(s.delete_flow(ACC, &f.id).await.unwrap(), Some(up));
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), None);
}

#[tokio::test]
async fn flow_escalation_fields_round_trip() {
    let s = mem().await;
    let plain = s.create_flow(ACC, &flow("plain")).await.unwrap();
    assert!(!plain.agent_assist);
    assert_eq!(plain.fallback, FlowFallback::Hangup);

    let mut new = flow("assisted");
    new.on_stream_end = OnStreamEnd::Connect {
        destination: "trunk:TR1".into(),
    };
    new.agent_assist = true;
    new.fallback = FlowFallback::Bot;
    let f = s.create_flow(ACC, &new).await.unwrap();
    assert!(f.agent_assist);
    assert_eq!(f.fallback, FlowFallback::Bot);
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), Some(f.clone()));

    new.agent_assist = false;
    let up = s.update_flow(ACC, &f.id, &new).await.unwrap().unwrap();
    assert!(!up.agent_assist);
    assert_eq!(up.fallback, FlowFallback::Bot);
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), Some(up.clone()));
    new.fallback = FlowFallback::Hangup;
    new.agent_assist = true;
    let up = s.update_flow(ACC, &f.id, &new).await.unwrap().unwrap();
    assert_eq!(s.flow(ACC, &f.id).await.unwrap(), Some(up.clone()));

    let cs = s.snapshot().await.unwrap();
    assert_eq!(cs.flow(&f.id), Some(&up));
    assert_eq!(cs.flow(&plain.id), Some(&plain));
}

#[tokio::test]
async fn flows_written_before_the_escalation_columns_get_the_defaults() {
    // A row inserted without the new columns, as every flow stored before migration 0003.
    let s = mem().await;
    sqlx::query(
        "INSERT INTO flows (id, account_sid, name, stream_url, protocol, direction, \
         custom_parameters, on_stream_end, date_created, date_updated) \
         VALUES ('FLold', ?, 'old', 'wss://bot.example/ws', 'exotel', 'bidirectional', '{}', \
         '{\"action\":\"hangup\"}', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')",
    )
    .bind(ACC)
    .execute(&s.pool)
    .await
    .unwrap();
    let old = s.flow(ACC, "FLold").await.unwrap().unwrap();
    assert!(!old.agent_assist);
    assert_eq!(old.fallback, FlowFallback::Hangup);

    // A value the code does not know is reported as a corrupt row, not guessed at.
    sqlx::query("UPDATE flows SET fallback = 'agent' WHERE id = 'FLold'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(matches!(
        s.flow(ACC, "FLold").await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn deleting_a_trunk_deletes_everything_under_it() {
    let s = mem().await;
    let t = s
        .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();
    let keep = s
        .create_trunk(ACC, &NewTrunk::new("b", "ANY-ANY", "b.example"))
        .await
        .unwrap();
    for trunk in [&t.sid, &keep.sid] {
        let n = if trunk == &t.sid { "1" } else { "2" };
        s.add_number(trunk, &format!("+91800000000{n}"), &Mode::Pstn)
            .await
            .unwrap();
        s.add_ip(trunk, IpNet::parse("10.0.0.0/16").unwrap())
            .await
            .unwrap();
        s.add_destination(trunk, "sip:10.0.0.1", None, None)
            .await
            .unwrap();
        s.add_credential(
            trunk,
            &NewCredential {
                user_name: "u".into(),
                password: "p".into(),
                friendly_name: None,
            },
        )
        .await
        .unwrap();
        s.set_setting(trunk, "trunk_external_alias", "+918000000001")
            .await
            .unwrap();
    }
    s.delete_trunk(ACC, &t.sid).await.unwrap().unwrap();
    assert!(s.list_numbers(&t.sid, Page::ALL).await.unwrap().is_empty());
    assert!(s.list_ips(&t.sid, Page::ALL).await.unwrap().is_empty());
    assert!(s
        .list_destinations(&t.sid, Page::ALL)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .list_credentials(&t.sid, Page::ALL)
        .await
        .unwrap()
        .is_empty());
    assert!(s.list_settings(&t.sid, Page::ALL).await.unwrap().is_empty());
    // The number is free again; the other trunk kept everything.
    s.add_number(&keep.sid, "+918000000001", &Mode::Pstn)
        .await
        .unwrap();
    assert_eq!(s.list_numbers(&keep.sid, Page::ALL).await.unwrap().len(), 2);
    assert_eq!(s.list_ips(&keep.sid, Page::ALL).await.unwrap().len(), 1);
    assert_eq!(
        s.list_credentials(&keep.sid, Page::ALL)
            .await
            .unwrap()
            .len(),
        1
    );
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.snapshot.trunks.len(), 1);
    assert_eq!(snap.credentials.len(), 1);
    assert_eq!(snap.destinations.len(), 1);
    assert_eq!(snap.settings.len(), 1);
}

#[tokio::test]
async fn snapshot_builds_the_admission_view() {
    let s = mem().await;
    let t = s
        .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();
    let mut paused = NewTrunk::new("b", "ANY-ANY", "b.example");
    paused.status = "inactive".into();
    paused.max_concurrent_calls = Some(3);
    paused.calls_per_minute = 10;
    let p = s.create_trunk(ACC, &paused).await.unwrap();
    s.add_ip(&t.sid, IpNet::parse("10.0.0.0/16").unwrap())
        .await
        .unwrap();
    s.add_credential(
        &p.sid,
        &NewCredential {
            user_name: "pbx".into(),
            password: "pw".into(),
            friendly_name: None,
        },
    )
    .await
    .unwrap();
    let f = s.create_flow(ACC, &flow("bot")).await.unwrap();
    let flow_mode = Mode::Flow {
        flow_id: f.id.clone(),
    };
    s.add_number(&t.sid, "+918000000001", &flow_mode)
        .await
        .unwrap();
    s.add_destination(&t.sid, "sip:10.0.0.9:5061;transport=tls", None, None)
        .await
        .unwrap();
    s.set_setting(&t.sid, "trunk_external_alias", "+918000000001")
        .await
        .unwrap();

    let cs = s.snapshot().await.unwrap();
    let snap = &cs.snapshot;
    let a = snap.trunk(&t.sid).unwrap();
    assert!(a.active);
    assert_eq!(a.whitelisted, vec![IpNet::parse("10.0.0.0/16").unwrap()]);
    assert!(!a.has_credentials);
    let b = snap.trunk(&p.sid).unwrap();
    assert!(!b.active);
    assert!(b.has_credentials);
    assert_eq!(b.max_concurrent_calls, Some(3));
    assert_eq!(b.calls_per_minute, 10);
    assert_eq!(snap.mapping("+918000000001").unwrap().mode, flow_mode);
    assert_eq!(
        snap.trunk_for_source("10.0.4.4".parse().unwrap())
            .unwrap()
            .sid,
        t.sid
    );
    let creds: Vec<_> = cs.credentials_of(&p.sid).collect();
    assert_eq!(creds.len(), 1);
    assert_eq!(
        (creds[0].user_name.as_str(), creds[0].password.as_str()),
        ("pbx", "pw")
    );
    assert_eq!(cs.flow(&f.id), Some(&f));
    assert_eq!(
        cs.destinations_of(&t.sid).next().unwrap().uri,
        "sip:10.0.0.9:5061;transport=tls"
    );
    assert_eq!(
        cs.setting(&t.sid, "trunk_external_alias"),
        Some("+918000000001")
    );
    assert_eq!(cs.trunk_record(&p.sid).unwrap().name, "b");
}

#[tokio::test]
async fn file_database_survives_reopen_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-missing-is-not-needed.db");
    let url = format!("sqlite://{}", path.display());
    let sid = {
        let s = Store::open(&url).await.unwrap();
        let t = s
            .create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
            .await
            .unwrap();
        s.add_number(&t.sid, "+918000000001", &Mode::Pstn)
            .await
            .unwrap();
        s.close().await;
        t.sid
    };
    assert!(path.exists());
    for _ in 0..2 {
        let s = Store::open(&url).await.unwrap();
        assert_eq!(s.trunk(ACC, &sid).await.unwrap().unwrap().name, "a");
        assert_eq!(s.list_numbers(&sid, Page::ALL).await.unwrap().len(), 1);
        s.close().await;
    }
}

#[tokio::test]
async fn memory_databases_are_separate() {
    let a = mem().await;
    let b = mem().await;
    a.create_trunk(ACC, &NewTrunk::new("a", "ANY-ANY", "a.example"))
        .await
        .unwrap();
    assert_eq!(a.list_trunks(ACC, Page::ALL).await.unwrap().len(), 1);
    assert!(b.list_trunks(ACC, Page::ALL).await.unwrap().is_empty());
}
