//! The image model on real photographs (scikit-image's data set, installed by
//! `scripts/install-deps.sh`): its top ImageNet classes are the sensible ones.

use imagejob_testkit as support;

use imagejob_operator::similarity::model::{EfficientNetLite0, classes, top_classes};

#[test]
fn the_networks_top_classes_on_real_photographs_are_the_sensible_ones() {
    let model = EfficientNetLite0::load(&support::model_path()).expect("the model");
    for (name, expected) in [
        (
            "chelsea.png",
            vec![classes::TABBY, classes::TIGER_CAT, classes::EGYPTIAN_CAT],
        ),
        (
            "coffee.png",
            vec![classes::ESPRESSO, classes::CUP, classes::COFFEE_MUG],
        ),
        (
            "rocket.jpg",
            vec![
                classes::MISSILE,
                classes::PROJECTILE,
                classes::SPACE_SHUTTLE,
            ],
        ),
    ] {
        let out = model.infer(&support::photo(name)).expect("inference");
        let top = top_classes(&out.logits, 5);
        eprintln!("{name}: top 5 {top:?}");
        assert!(
            expected.contains(&top[0]),
            "{name}: top 1 of {top:?} not in {expected:?}"
        );
        let norm: f32 = out.embedding.iter().map(|x| x * x).sum();
        assert!(
            (norm - 1.0).abs() < 1e-3,
            "the embedding is a unit vector: {norm}"
        );
    }
}
