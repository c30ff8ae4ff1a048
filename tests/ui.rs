//! The jobs page in headless Chromium, driven through WebDriver, over the real stack: the token
//! prompt, submitting through the form, live badges, a job's page with its similar products and
//! timeline, cancel from the page, user text that stays text, and screenshots; a dropped browser
//! leaves no process behind.

use imagejob_testkit as support;

use axum::{Router, extract::Path, http::header, routing::get};
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    TestWorker,
    facade_env::{TOKEN, TestFacade},
    kube_env::{InProcessController, Setup},
    lykdat::{FakeLykdat, Reply},
    webdriver::{Browser, processes_in_group},
};

const WAIT: Duration = Duration::from_secs(60);
const XSS_TITLE: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_TAG: &str = "<script>window.__xss=2</script>";

/// A local server for the pictures: the jobs' images and the similar products' pictures.
async fn picture_server() -> String {
    let svg = |Path(name): Path<String>| async move {
        let color = if name.contains("shirt") {
            "#3b6fd8"
        } else {
            "#d87a3b"
        };
        let body = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300"><rect width="400" height="300" fill="{color}"/><circle cx="200" cy="150" r="80" fill="white" opacity=".5"/></svg>"#
        );
        ([(header::CONTENT_TYPE, "image/svg+xml")], body)
    };
    let app = Router::new().route("/img/{name}", get(svg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn products(pictures: &str) -> Reply {
    let product = |i: u32, name: &str, image: &str| {
        json!({"id": i.to_string(), "name": name, "brand_name": "Acme", "vendor": "shop",
            "url": format!("{pictures}/shop/{i}"), "matching_image": image, "images": [],
            "price": "29.99", "reduced_price": "19.99", "currency": "USD", "category": "tops",
            "sub_category": null, "gender": null, "score": 0.9 - f64::from(i) / 10.0})
    };
    Reply::products(vec![
        product(1, "Linen shirt", &format!("{pictures}/img/p1.svg")),
        // Not an http(s) picture: the page must not render it as an image.
        product(
            2,
            r#"<img src=x onerror="window.__xss=3">"#,
            "javascript:alert(3)",
        ),
    ])
    .after(Duration::from_secs(1))
}

async fn post_job(facade: &TestFacade, body: Value) -> String {
    let r = facade
        .http
        .post(facade.url("/images/process"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    body["workflow_id"].as_str().unwrap().to_owned()
}

fn card(workflow_id: &str) -> String {
    format!(r#".card[data-workflow-id="{workflow_id}"]"#)
}

fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_jobs_page_submits_shows_products_filters_cancels_and_keeps_user_text_as_text() {
    let s = Setup::new("ui").await;
    let pictures = picture_server().await;
    let slow_search = Reply::ok(&[]).after(Duration::from_secs(120));
    let fake = FakeLykdat::start(vec![products(&pictures), slow_search]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let facade = TestFacade::start(&s.client, &s.ns, &s.settings).await;
    let browser = Browser::start().await;

    // Auth on: the page asks for a token; a wrong one is refused with a clear message.
    browser.goto(&facade.url("/ui/")).await;
    let dialog = "#token-dialog[open]";
    let token = browser
        .wait_for(&format!("{dialog} input[name=token]"), WAIT)
        .await;
    browser.type_into(&token, "not-the-token").await;
    browser.click_on(&format!("{dialog} button"), WAIT).await;
    browser
        .wait_until(
            "the refusal",
            r#"return document.querySelector('#token-message').textContent.includes("not accepted")
                && document.querySelector('#token-dialog').open"#,
            WAIT,
        )
        .await;
    let token = browser
        .wait_for(&format!("{dialog} input[name=token]"), WAIT)
        .await;
    browser.type_into(&token, TOKEN).await;
    browser.click_on(&format!("{dialog} button"), WAIT).await;
    // The page shows "Loading…" until its first list arrives; wait for the list, not the placeholder.
    browser
        .wait_until(
            "the empty list",
            r#"const empty = document.querySelector('#main .empty');
               return empty !== null && empty.textContent.includes("No jobs yet")"#,
            WAIT,
        )
        .await;

    // Submit through the form: the card appears and turns Completed without a reload.
    browser.run("window.__sameDocument = true", vec![]).await;
    browser.click_on("#new-job", WAIT).await;
    let form = "#submit-dialog[open]";
    let url = browser
        .wait_for(&format!("{form} input[name=url]"), WAIT)
        .await;
    browser
        .type_into(&url, &format!("{pictures}/img/shirt.svg"))
        .await;
    let title = browser
        .wait_for(&format!("{form} input[name=title]"), WAIT)
        .await;
    browser.type_into(&title, "Blue shirt").await;
    let tags = browser
        .wait_for(&format!("{form} input[name=tags]"), WAIT)
        .await;
    browser.type_into(&tags, "shirt, blue").await;
    browser
        .click_on(&format!("{form} button[type=submit]"), WAIT)
        .await;
    let done = browser
        .text_of(r#".card[data-status="completed"]"#, WAIT)
        .await;
    assert_eq!(done.lines().next(), Some("Blue shirt"));
    let same = browser
        .run("return window.__sameDocument === true", vec![])
        .await;
    assert_eq!(same, json!(true), "the page was not reloaded");
    let tag_count = browser
        .run(
            r#"return document.querySelectorAll(".card .tags li").length"#,
            vec![],
        )
        .await;
    assert_eq!(tag_count, json!(2));

    // A job with a similarity search: its page shows the products as picture cards.
    let searched = post_job(
        &facade,
        json!({"url": format!("{pictures}/img/shirt2.svg"),
        "title": "Searched shirt", "similarity_search": true}),
    )
    .await;
    browser
        .wait_for(
            &format!(r#"{}[data-status="completed"]"#, card(&searched)),
            WAIT,
        )
        .await;
    browser
        .click_on(&format!("{} a", card(&searched)), WAIT)
        .await;
    browser.wait_for(".job .product", WAIT).await;
    let product_view = browser
        .run(
            r#"return [...document.querySelectorAll(".product")].map(p => ({
                text: p.textContent, img: p.querySelector("img")?.getAttribute("src") ?? null,
                link: p.querySelector("a")?.getAttribute("href") ?? null }))"#,
            vec![],
        )
        .await;
    let shown = product_view.as_array().unwrap();
    assert_eq!(shown.len(), 2, "{product_view}");
    assert_eq!(shown[0]["img"], json!(format!("{pictures}/img/p1.svg")));
    assert!(shown[0]["text"].as_str().unwrap().contains("Linen shirt"));
    assert!(shown[0]["text"].as_str().unwrap().contains("19.99"));
    assert_eq!(shown[0]["link"], json!(format!("{pictures}/shop/1")));
    assert_eq!(
        shown[1]["img"],
        Value::Null,
        "a javascript: picture is not rendered"
    );
    let steps = browser
        .run(
            r#"return [...document.querySelectorAll(".timeline li")].map(li => li.dataset.step)"#,
            vec![],
        )
        .await;
    for step in [
        "created",
        "started",
        "metadata_stored",
        "similarity_search_completed",
        "completed",
    ] {
        assert!(
            steps.as_array().unwrap().contains(&json!(step)),
            "{step} in {steps}"
        );
    }
    let link = browser
        .run(
            r#"return document.querySelector(".temporal-link").getAttribute("href")"#,
            vec![],
        )
        .await;
    assert!(
        link.as_str()
            .unwrap()
            .ends_with(&format!("/workflows/{searched}")),
        "{link}"
    );
    let loaded = browser
        .run(
            r#"return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"#,
            vec![],
        )
        .await;
    assert!(
        loaded.as_u64().unwrap() >= 2,
        "the hero and the product pictures loaded: {loaded}"
    );
    browser
        .screenshot(&screenshots().join("job-page.png"))
        .await;

    // Cancel from the page: the badge turns Cancelled.
    browser.goto(&facade.url("/ui/#/")).await;
    let slow = post_job(
        &facade,
        json!({"url": format!("{pictures}/img/slow.svg"),
        "title": "Slow search", "similarity_search": true}),
    )
    .await;
    let running = format!(r#"{}[data-status="processing"] button.cancel"#, card(&slow));
    browser.click_on(&running, WAIT).await;
    browser
        .wait_for(
            &format!(r#"{}[data-status="cancelled"]"#, card(&slow)),
            WAIT,
        )
        .await;
    // Retry from the page: the cancelled job runs again (its search, slow again).
    let cancelled = format!(r#"{}[data-status="cancelled"] button.retry"#, card(&slow));
    browser.click_on(&cancelled, WAIT).await;
    browser
        .wait_for(
            &format!(r#"{}[data-status="processing"]"#, card(&slow)),
            WAIT,
        )
        .await;

    // Filter by tag, then cancel every running job shown: only the tagged ones end cancelled.
    let slow_job = |tag: &str| {
        json!({"url": format!("{pictures}/img/slow-{tag}.svg"), "title": format!("Slow {tag}"),
        "tags": [tag], "similarity_search": true})
    };
    let mut tagged = Vec::new();
    for _ in 0..2 {
        tagged.push(post_job(&facade, slow_job("bulk")).await);
    }
    let other = post_job(&facade, slow_job("keep")).await;
    for id in tagged.iter().chain([&other]) {
        let shown = format!(r#"{}[data-status="processing"]"#, card(id));
        browser.wait_for(&shown, WAIT).await;
    }
    let filter = browser.wait_for("#tag-filter", WAIT).await;
    browser.type_into(&filter, "bulk\u{E007}").await;
    let hidden = format!("return document.querySelector('{}') === null", card(&other));
    browser
        .wait_until("only the tagged jobs shown", &hidden, WAIT)
        .await;
    browser.click_on("#cancel-shown", WAIT).await;
    for id in &tagged {
        let cancelled = format!(r#"{}[data-status="cancelled"]"#, card(id));
        browser.wait_for(&cancelled, WAIT).await;
    }
    browser
        .run(
            "const f = document.querySelector('#tag-filter'); f.value = ''; \
             f.dispatchEvent(new Event('change')); return true",
            vec![],
        )
        .await;
    let untouched = format!(r#"{}[data-status="processing"]"#, card(&other));
    browser.wait_for(&untouched, WAIT).await;

    // User text renders as text: no element, no script, no dialog.
    let xss = post_job(
        &facade,
        json!({"url": format!("{pictures}/img/x.svg"), "title": XSS_TITLE,
        "description": XSS_TAG, "tags": [XSS_TAG]}),
    )
    .await;
    let xss_card = browser
        .text_of(&format!(r#"{}[data-status="completed"]"#, card(&xss)), WAIT)
        .await;
    assert_eq!(xss_card.lines().next(), Some(XSS_TITLE));
    let injected = browser
        .run(
            r#"return { xss: window.__xss ?? null, scripts: document.scripts.length,
                imgX: document.querySelectorAll('img[src="x"]').length }"#,
            vec![],
        )
        .await;
    assert_eq!(injected, json!({"xss": null, "scripts": 1, "imgX": 0}));
    assert_eq!(browser.alert_text().await, None, "no dialog opened");
    browser.screenshot(&screenshots().join("gallery.png")).await;

    // The API the page reads: newest first (creation times have a resolution of a second, and
    // jobs created within one are ordered by name), and one job by its id.
    let all = facade
        .get_json("/images/workflows?order=newest&limit=100")
        .await;
    let items = all["items"].as_array().expect("items");
    let created: Vec<&str> = items
        .iter()
        .map(|i| i["created_at"].as_str().unwrap_or_default())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{all}");
    assert!(
        items.iter().any(|i| i["workflow_id"] == json!(xss)),
        "{all}"
    );
    let newest = facade
        .get_json("/images/workflows?order=newest&limit=1")
        .await;
    assert_eq!(
        newest["items"][0]["workflow_id"], items[0]["workflow_id"],
        "{newest}"
    );
    assert!(newest["continue"].is_string(), "{newest}");
    let one = facade
        .get_json(&format!("/images/workflow/{searched}"))
        .await;
    assert_eq!(one["title"], "Searched shirt");
    assert_eq!(one["similarity_summary"], "2 matches, best 0.80");

    browser.resize(390, 844).await;
    browser.wait_for(&card(&xss), WAIT).await;
    let fits = browser
        .run(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await;
    assert_eq!(fits, json!(true), "no horizontal scrolling at phone width");
    browser
        .screenshot(&screenshots().join("gallery-phone.png"))
        .await;
    println!("screenshots in {}", screenshots().display());
}

/// A browser dropped ends chromedriver and every Chromium process it started (they used to
/// outlive the tests, one browser's worth per run).
#[tokio::test]
async fn a_dropped_browser_leaves_no_process_behind() {
    let browser = Browser::start().await;
    let group = browser.process_group();
    let started = processes_in_group(group);
    assert!(
        started.len() > 1,
        "chromedriver and its Chromium in group {group}: {started:?}"
    );
    drop(browser);
    support::eventually(
        "the browser's processes to end",
        Duration::from_secs(10),
        || async { processes_in_group(group).is_empty().then_some(()) },
    )
    .await;
}
